"""Active sessions: listed with device, address and last use; ended one by one or all."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent, UserSession
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = reverse("accounts:login")
SETTINGS = reverse("accounts:settings")
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)


def browser(user, *, ip: str, agent: str) -> Client:
    client = Client(REMOTE_ADDR=ip, HTTP_USER_AGENT=agent)
    assert client.post(LOGIN, {"username": user.email, "password": PASSWORD}).status_code == 302
    return client


def signed_in(client: Client) -> bool:
    return client.get(reverse("home")).context["user"].is_authenticated


def test_the_settings_page_lists_each_session(alice):
    laptop = browser(alice, ip="198.51.100.1", agent=FIREFOX)
    browser(alice, ip="203.0.113.9", agent=IPHONE)
    html = laptop.get(SETTINGS).content.decode()
    assert "Firefox on Linux" in html and "Safari on iPhone" in html
    assert "198.51.100.1" in html and "203.0.113.9" in html
    assert "this browser" in html
    assert UserSession.objects.filter(owner=alice).count() == 2
    # The session key itself never reaches a page.
    for key in UserSession.objects.values_list("session_key", flat=True):
        assert key not in html


def test_ending_another_session_signs_it_out(alice):
    laptop = browser(alice, ip="198.51.100.1", agent=FIREFOX)
    phone = browser(alice, ip="203.0.113.9", agent=IPHONE)
    row = UserSession.objects.get(owner=alice, user_agent=IPHONE)
    response = laptop.post(reverse("accounts:session_end", args=[row.pk]))
    assert response.status_code == 302
    assert not signed_in(phone)
    assert signed_in(laptop)
    assert AuditEvent.objects.filter(owner=alice, action="account.session_ended").exists()


def test_ending_all_other_sessions_keeps_this_one(alice):
    laptop = browser(alice, ip="198.51.100.1", agent=FIREFOX)
    others = [browser(alice, ip=f"203.0.113.{n}", agent=IPHONE) for n in range(3)]
    response = laptop.post(reverse("accounts:sessions_end_others"), follow=True)
    assert "Signed out 3 other sessions." in response.content.decode()
    assert signed_in(laptop)
    assert not any(signed_in(other) for other in others)
    assert UserSession.objects.filter(owner=alice).count() == 1


def test_a_password_change_ends_every_other_session(alice):
    laptop = browser(alice, ip="198.51.100.1", agent=FIREFOX)
    phone = browser(alice, ip="203.0.113.9", agent=IPHONE)
    new = "a brand new passphrase 77"
    response = laptop.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
        follow=True,
    )
    assert "1 other session was signed out." in response.content.decode()
    assert signed_in(laptop)
    assert not signed_in(phone)
    event = AuditEvent.objects.get(owner=alice, action="account.password_changed")
    assert event.details == {"other_sessions_ended": 1}


def test_another_users_session_is_a_404(alice, bob):
    alices = browser(alice, ip="198.51.100.1", agent=FIREFOX)
    bobs = browser(bob, ip="198.51.100.2", agent=IPHONE)
    row = UserSession.objects.get(owner=alice)
    assert bobs.post(reverse("accounts:session_end", args=[row.pk])).status_code == 404
    assert signed_in(alices)


def test_logging_out_removes_the_session_from_the_list(alice):
    laptop = browser(alice, ip="198.51.100.1", agent=FIREFOX)
    laptop.post(reverse("accounts:logout"))
    assert not UserSession.objects.filter(owner=alice).exists()


def test_a_password_reset_ends_every_session(alice):
    import re

    from django.core import mail

    laptop = browser(alice, ip="198.51.100.1", agent=FIREFOX)
    stranger = Client()
    stranger.post(reverse("accounts:password_reset"), {"email": alice.email})
    link = re.search(r"https?://[^/]+(/accounts/password/reset/\S+)", str(mail.outbox[0].body))
    assert link
    form_page = stranger.get(link.group(1), follow=True)
    new = "another long passphrase 99"
    stranger.post(form_page.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert not signed_in(laptop)
    assert not UserSession.objects.filter(owner=alice).exists()
    assert AuditEvent.objects.filter(owner=alice, action="account.password_reset").exists()
