"""Export: a ZIP built by a worker with progress, downloadable once by its owner, for a day."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from datetime import timedelta

import pytest
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from privacy import exports
from privacy.models import AccountExport
from tests.keys_helpers import GOOD_SECRET, add_key
from tests.security_helpers import make_conversation

EXPORT = reverse("privacy:export")


def build(user) -> AccountExport:
    request = RequestFactory().post("/")
    export = exports.account_export_request(user=user, request=request)
    exports.account_export_build(export_id=str(export.pk))
    export.refresh_from_db()
    return export


def read_zip(data: bytes) -> dict[str, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist()}


@pytest.mark.django_db
def test_the_archive_holds_opened_conversations_key_metadata_usage_and_the_log(alice_client, alice):
    key = add_key(alice, None, preset="openai", label="Work")
    make_conversation(alice, key, "my secret plans for tuesday", reply="sounds good")
    export = build(alice)
    assert export.status == "ready" and export.progress == 100
    assert b"secret plans" not in bytes(export.sealed_archive)  # sealed at rest

    response = alice_client.get(reverse("privacy:export_download", args=[export.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    files = read_zip(response.content)
    conversation = json.loads(next(v for k, v in files.items() if k.startswith("conversations/")))
    assert conversation["title"] == "Plans"
    assert [m["text"] for m in conversation["messages"]] == [
        "my secret plans for tuesday",
        "sounds good",
    ]
    keys = json.loads(files["keys.json"])
    assert keys[0]["label"] == "Work" and keys[0]["fingerprint"] == key.fingerprint
    everything = "".join(files.values())
    assert GOOD_SECRET not in everything and "sealed" not in files["keys.json"]
    assert alice.password not in everything
    usage = list(csv.reader(io.StringIO(files["usage.csv"])))
    assert usage and usage[0]  # a header row at least (the usage app's, or the fallback)
    assert "Key added" in files["security_log.csv"]


@pytest.mark.django_db
def test_it_downloads_once(alice_client, alice):
    export = build(alice)
    url = reverse("privacy:export_download", args=[export.pk])
    assert alice_client.get(url).status_code == 200
    again = alice_client.get(url)
    assert again.status_code == 302
    export.refresh_from_db()
    assert export.status == "downloaded" and bytes(export.sealed_archive) == b""


@pytest.mark.django_db
def test_it_expires_after_a_day(alice_client, alice):
    export = build(alice)
    AccountExport.objects.filter(pk=export.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = alice_client.get(reverse("privacy:export_download", args=[export.pk]))
    assert response.status_code == 302
    export.refresh_from_db()
    assert export.status == "expired" and bytes(export.sealed_archive) == b""
    fresh = build(alice)
    assert timedelta(hours=23) < fresh.expires_at - timezone.now() <= timedelta(hours=24)


@pytest.mark.django_db
def test_another_user_cannot_see_or_download_it(client, alice, bob):
    export = build(alice)
    client.force_login(bob)
    for name in ("privacy:export_download", "privacy:export_status"):
        assert client.get(reverse(name, args=[export.pk])).status_code == 404
    assert str(export.pk) not in client.get(EXPORT).content.decode()
    export.refresh_from_db()
    assert export.status == "ready"


@pytest.mark.django_db(transaction=True)
def test_a_worker_prepares_it_while_the_page_shows_progress(client, celery_worker):
    from accounts.models import User

    user = User.objects.create_user(email="carol@example.com", password="x" * 12)
    client.force_login(user)
    assert client.post(EXPORT).status_code == 302
    export = AccountExport.objects.get(owner=user)
    page = client.get(EXPORT).content.decode()
    assert "Export progress" in page or "Download ZIP" in page
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        export.refresh_from_db()
        if export.status == "ready":
            break
        fragment = client.get(reverse("privacy:export_status", args=[export.pk]))
        assert fragment.status_code == 200
        time.sleep(0.1)
    assert export.status == "ready", f"the export stayed {export.status}"
    row = client.get(reverse("privacy:export_status", args=[export.pk])).content.decode()
    assert "Download ZIP" in row and "hx-trigger" not in row
