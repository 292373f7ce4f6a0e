"""The operator dashboard: its figures match seeded data, and each links to its list."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from chat.models import Conversation, Message
from core.heartbeat import WORKERS_KEY
from core.redis import get_redis
from keys.models import ProviderKey
from ops.selectors import dashboard, percentile_from_histogram
from tests.operators_helpers import (
    event_on,
    figure,
    figure_link,
    fresh_cache,  # noqa: F401 (a fixture)
    operator_client,
    record_turn,
)
from usage.models import (
    LatencyDaily,
    ModelPrice,
    ProviderDaily,
    UserActivity,
    latency_bucket,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_cache")]


@pytest.fixture
def seeded(alice, bob):
    """Two active users and a dormant one; turns today, this week and last month."""
    today = timezone.localdate()
    ModelPrice.objects.update_or_create(
        preset="openai",
        model="ops-test",
        defaults={"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000},
    )
    carol = User.objects.create_user(email="carol@example.com", password="x" * 12)
    User.objects.filter(pk=carol.pk).update(date_joined=timezone.now() - timedelta(days=30))
    # Today, through usage_record: 2 OK turns for alice, 1 failed turn for bob.
    record_turn(alice, model="ops-test", ttft_ms=120, latency_ms=900)
    record_turn(alice, model="ops-test", ttft_ms=400, latency_ms=2500)
    record_turn(
        bob,
        preset="anthropic",
        model="claude-x",
        status="error",
        error_kind="rate_limited",
        input_tokens=0,
        output_tokens=0,
        ttft_ms=None,
        latency_ms=150,
    )
    # Earlier: 3 days ago (in the 7-day window), 20 days ago (chart only).
    event_on(alice, today - timedelta(days=3), cost_micro=5_000_000, input_tokens=1000)
    event_on(
        carol,
        today - timedelta(days=20),
        status="error",
        error_kind="invalid_key",
        cost_micro=0,
    )
    User.objects.filter(pk=carol.pk).update(date_joined=timezone.now() - timedelta(days=30))
    for status in ("invalid", "invalid", "no_credit", "valid"):
        ProviderKey.objects.create(
            owner=bob,
            preset="openai",
            label=f"k-{ProviderKey.objects.count()}",
            base_url="https://api.openai.com/v1",
            sealed_secret=b"x",
            fingerprint="sk-…abcd",
            status=status,
        )
    return {"today": today, "carol": carol}


def test_it_shows_figures_matching_the_seeded_data(seeded):
    _op, client = operator_client()
    html = client.get(reverse("admin:index")).content.decode()
    # Users: alice, bob, carol and the operator; carol joined a month ago.
    assert figure(html, "users_total") == "4"
    assert figure(html, "users_new") == "3"
    assert figure(html, "users_active") == "2"  # carol's last turn was 20 days ago
    assert figure(html, "turns_today") == "3"
    assert figure(html, "turns_window") == "4"
    assert figure(html, "errors_window") == "1"
    assert "25.0% of turns" in html
    assert figure(html, "keys_invalid") == "2"
    assert figure(html, "keys_no_credit") == "1"
    # 30-day totals by provider: openai = 2 turns today (150 tokens each, 200 µ$ each)
    # + 1,050 tokens and $5 three days ago + 150 tokens twenty days ago.
    assert '<tr data-preset="openai"><td>' in html
    assert '>1500</td><td class="num">$5.00</td>' in html
    assert '>0</td><td class="num">$0.00</td>' in html  # anthropic
    assert '<tr data-kind="rate_limited">' in html
    assert '<tr data-kind="invalid_key">' not in html  # outside the 7-day window
    assert "Tokens per day by provider" in html and "<svg" in html


def test_the_figures_come_from_rollups_not_events(seeded):
    figures = dashboard()
    assert figures.turns_today == 3 and figures.turns_window == 4
    assert figures.errors_by_kind == [("rate_limited", 1)]
    openai = next(row for row in figures.latency if row.preset == "openai")
    # TTFT 120, 400 today and 300 three days ago → buckets ≤200, ≤500, ≤300.
    assert (openai.ttft_p50, openai.ttft_p95) == (300, 500)
    assert (openai.total_p50, openai.total_p95) == (1500, 3000)
    anthropic = next(row for row in figures.latency if row.preset == "anthropic")
    assert anthropic.ttft_p50 is None and anthropic.total_p50 == 200
    assert sum(figures.spend_by_preset["openai"]) == 5_000_400


def test_percentiles_come_from_fixed_buckets():
    counts = {latency_bucket(ms): 0 for ms in (10,)}
    for ms in [100] * 90 + [4000] * 10:
        counts[latency_bucket(ms)] = counts.get(latency_bucket(ms), 0) + 1
    assert percentile_from_histogram(counts, 0.5) == 100
    assert percentile_from_histogram(counts, 0.95) == 5000
    assert percentile_from_histogram({}, 0.5) is None
    assert percentile_from_histogram({latency_bucket(10**7): 1}, 0.5) == 300_000


def test_a_turn_adds_one_row_per_bucket_and_day(alice):
    record_turn(alice, ttft_ms=300, latency_ms=1200)
    record_turn(alice, ttft_ms=290, latency_ms=1100)
    rows = LatencyDaily.objects.filter(metric="ttft")
    assert [(row.bucket, row.count) for row in rows] == [(latency_bucket(300), 2)]


def test_each_figure_links_to_the_filtered_list_behind_it(seeded):
    _op, client = operator_client()
    html = client.get(reverse("admin:index")).content.decode()
    expectations = {
        "users_total": 4,
        "users_new": 3,
        "users_active": 2,
        "turns_today": 3,
        "turns_window": 4,
        "errors_window": 1,
        "keys_invalid": 2,
        "keys_no_credit": 1,
    }
    for name, count in expectations.items():
        url = figure_link(html, name)
        response = client.get(url)
        assert response.status_code == 200, (name, url)
        assert response.context["cl"].queryset.count() == count, (name, url)
    # Error classes and providers link to their usage events.
    assert (
        client.get(
            reverse("admin:usage_usageevent_changelist")
            + "?status=error&error_kind=rate_limited&day__gte="
            + str(seeded["today"] - timedelta(days=6))
        )
        .context["cl"]
        .queryset.count()
        == 1
    )


def test_health_shows_queue_workers_oldest_queued_and_stuck_turns(alice):
    _op, client = operator_client()
    redis = get_redis()
    # No worker and an empty queue first.
    html = client.get(reverse("admin:dashboard_health")).content.decode()
    assert figure(html, "workers") == "0"
    assert "No worker has sent a heartbeat" in html
    redis.zadd(WORKERS_KEY, {"worker@test": time.time()})
    redis.rpush("turns", "a", "b", "c")
    conversation = Conversation.objects.create(owner=alice, preset="openai", model="m")
    Message.objects.create(
        conversation=conversation,
        owner=alice,
        role="assistant",
        status="queued",
        created_at=timezone.now() - timedelta(minutes=10),
    )
    html = client.get(reverse("admin:dashboard_health")).content.decode()
    assert figure(html, "workers") == "1"
    assert "worker@test" in html
    assert figure(html, "queue_turns") == "3"
    assert figure(html, "queue_default") == "0"
    assert figure(html, "oldest_queued") == "10 min"
    assert figure(html, "stuck_turns") == "1"
    assert "The queue is growing" in html
    stuck = client.get(figure_link(html, "stuck_turns"))
    assert stuck.context["cl"].queryset.count() == 1
    # The dashboard index carries the same panel, refreshed by htmx.
    index = client.get(reverse("admin:index")).content.decode()
    assert 'hx-get="/admin/dashboard/health/"' in index
    assert figure(index, "queue_turns") == "3"


def test_active_users_follow_each_users_latest_day(alice, bob):
    today = timezone.localdate()
    event_on(alice, today - timedelta(days=10))
    event_on(bob, today - timedelta(days=10))
    assert dashboard().users_active == 0
    cache.clear()  # the dashboard's user counts are a minute old at most
    record_turn(alice)
    record_turn(alice)  # a second turn the same day changes nothing
    event_on(bob, today - timedelta(days=2))
    event_on(bob, today - timedelta(days=20))  # an older turn recorded later moves nothing
    days = dict(UserActivity.objects.values_list("user__email", "last_turn_on"))
    assert days == {"alice@example.com": today, "bob@example.com": today - timedelta(days=2)}
    cache.clear()
    assert dashboard().users_active == 2
    assert UserActivity.objects.get(user=alice).last_turn_on == today


def test_the_rollups_can_be_rebuilt_from_the_events(seeded):
    from django.core.management import call_command

    before = dashboard()
    ProviderDaily.objects.all().delete()
    UserActivity.objects.all().delete()
    call_command("ops_rollups_rebuild", stdout=io.StringIO())
    after = dashboard()
    assert after == before
