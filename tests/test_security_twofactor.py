"""Two-factor authentication: enrolment, sealed seeds, log-in, recovery codes, staff."""

from __future__ import annotations

import base64
import re

import pytest
from django.urls import reverse

from accounts.models import AuditEvent, RecoveryCode, TOTPDevice
from accounts.twofactor import SEED_PURPOSE, open_seed
from tests.conftest import PASSWORD
from tests.security_helpers import allow_code_reuse, code_for, enrol, expire_sudo
from vault.crypto import VaultError
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db

SETUP = reverse("accounts:two_factor_setup")
LOGIN = reverse("accounts:login")
VERIFY = reverse("accounts:login_verify")


def test_enrolment_draws_the_qr_code_here_and_turns_on_with_a_right_code(alice_client, alice):
    page = alice_client.get(SETUP)
    assert page.status_code == 200
    html = page.content.decode()
    assert "<svg" in html and "<path" in html
    # A viewBox and no fixed size: the page's CSS scales the whole code, never crops it.
    svg_tag = html[html.index("<svg") : html.index(">", html.index("<svg"))]
    assert "viewBox=" in svg_tag and "width=" not in svg_tag
    assert not re.search(r'<img[^>]+src="https?://', html)  # no outside QR service
    device = TOTPDevice.objects.get(user=alice)
    assert not device.confirmed

    wrong = alice_client.post(SETUP, {"token": "000000"})
    assert wrong.status_code == 400
    assert "not right" in wrong.content.decode()
    allow_code_reuse(device)

    done = alice_client.post(SETUP, {"token": code_for(device)})
    assert done.status_code == 200
    codes = re.findall(r"<code>([a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4})</code>", done.content.decode())
    assert len(codes) == 10 and len(set(codes)) == 10
    device.refresh_from_db()
    assert device.confirmed
    assert AuditEvent.objects.filter(owner=alice, action="2fa.enabled").exists()
    assert "no-cache" in done["Cache-Control"] or "no-store" in done["Cache-Control"]
    # Shown once: the settings page does not show them again.
    assert codes[0] not in alice_client.get(reverse("accounts:settings")).content.decode()


def test_the_seed_is_sealed_in_the_vault_and_bound_to_its_row(alice):
    device, _codes = enrol(alice)
    seed = open_seed(device)
    stored = bytes(TOTPDevice.objects.get(pk=device.pk).sealed_seed)
    assert seed not in stored
    assert base64.b32encode(seed) not in stored
    assert seed.hex().encode() not in stored
    with pytest.raises(VaultError):
        OwnerCipher(alice).open(SEED_PURPOSE, device.pk + 1, stored)


def test_recovery_codes_are_stored_as_hashes_only(alice):
    _device, codes = enrol(alice)
    stored = " ".join(RecoveryCode.objects.values_list("code_hash", flat=True))
    assert RecoveryCode.objects.count() == 10
    for code in codes:
        assert code not in stored and code.replace("-", "") not in stored


def test_log_in_asks_for_the_code_before_the_session_is_signed_in(client, alice):
    device, _codes = enrol(alice)
    allow_code_reuse(device)
    first = client.post(LOGIN, {"username": alice.email, "password": PASSWORD})
    assert first.status_code == 302 and first["Location"].startswith(VERIFY)
    assert not client.get(reverse("home")).context["user"].is_authenticated

    wrong = client.post(VERIFY, {"token": "123456"})
    assert wrong.status_code == 400
    assert AuditEvent.objects.filter(
        owner=alice, action="login.failed", details__step="2fa"
    ).exists()
    allow_code_reuse(device)

    done = client.post(VERIFY, {"token": code_for(device)})
    assert done.status_code == 302
    assert client.get(reverse("home")).context["user"] == alice
    assert AuditEvent.objects.filter(owner=alice, action="login.succeeded").exists()


def test_a_recovery_code_signs_in_once(client, alice):
    _device, codes = enrol(alice)
    client.post(LOGIN, {"username": alice.email, "password": PASSWORD})
    response = client.post(VERIFY, {"token": codes[0].upper()})
    assert response.status_code == 302
    assert AuditEvent.objects.filter(owner=alice, action="2fa.recovery_code_used").exists()
    client.post(reverse("accounts:logout"))

    client.post(LOGIN, {"username": alice.email, "password": PASSWORD})
    again = client.post(VERIFY, {"token": codes[0]})
    assert again.status_code == 400
    assert not client.get(reverse("home")).context["user"].is_authenticated


def test_the_verify_step_without_a_password_first_goes_back_to_log_in(client, alice):
    enrol(alice)
    response = client.post(VERIFY, {"token": "123456"})
    assert response.status_code == 302 and response["Location"] == LOGIN


def test_turning_2fa_off_needs_sudo_with_the_second_factor(alice_client, alice):
    device, _codes = enrol(alice)
    expire_sudo(alice_client)
    disable = reverse("accounts:two_factor_disable")
    response = alice_client.post(disable)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:sudo"))
    assert TOTPDevice.objects.filter(user=alice, confirmed=True).exists()

    sudo_url = reverse("accounts:sudo")
    only_password = alice_client.post(sudo_url, {"password": PASSWORD})
    assert only_password.status_code == 400  # the code is required too
    allow_code_reuse(device)
    ok = alice_client.post(sudo_url, {"password": PASSWORD, "token": code_for(device)})
    assert ok.status_code == 302
    assert alice_client.post(disable).status_code == 302
    assert not TOTPDevice.objects.filter(user=alice).exists()
    assert AuditEvent.objects.filter(owner=alice, action="2fa.disabled").exists()


def test_new_recovery_codes_replace_the_old_ones(alice_client, alice):
    _device, old = enrol(alice)
    response = alice_client.post(reverse("accounts:recovery_codes"))
    assert response.status_code == 200
    new = re.findall(r"<code>([a-z0-9-]{14})</code>", response.content.decode())
    assert len(new) == 10 and not set(new) & set(old)
    assert RecoveryCode.objects.filter(device__user=alice).count() == 10


# --- staff ----------------------------------------------------------------------------------


@pytest.fixture
def operator(db):
    from accounts.models import User

    return User.objects.create_superuser(email="op@example.com", password=PASSWORD)


def test_staff_without_2fa_are_sent_to_enrol_before_the_admin(client, operator):
    client.force_login(operator)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith(SETUP)
    device = TOTPDevice.objects.none()
    client.get(response["Location"])
    device = TOTPDevice.objects.get(user=operator)
    done = client.post(response["Location"], {"token": code_for(device)})
    assert done.status_code == 200
    assert client.get("/admin/").status_code == 200


def test_enrolled_staff_must_verify_in_each_session(client, operator):
    device, _codes = enrol(operator)
    allow_code_reuse(device)
    client.force_login(operator)  # a password-only session
    response = client.get("/admin/accounts/user/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:two_factor_verify"))
    ok = client.post(response["Location"], {"token": code_for(device)})
    assert ok.status_code == 302 and ok["Location"] == "/admin/accounts/user/"
    assert client.get("/admin/accounts/user/").status_code == 200


def test_staff_log_in_through_the_site_login_with_their_code(client, operator):
    device, _codes = enrol(operator)
    allow_code_reuse(device)
    admin_login = client.get("/admin/login/?next=/admin/")
    assert admin_login["Location"].startswith(LOGIN)
    step = client.post(f"{LOGIN}?next=/admin/", {"username": operator.email, "password": PASSWORD})
    assert step["Location"].startswith(VERIFY)
    done = client.post(step["Location"], {"token": code_for(device)})
    assert done["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_staff_cannot_turn_2fa_off(client, operator):
    enrol(operator)
    client.force_login(operator)
    client.post(reverse("accounts:two_factor_disable"))
    assert TOTPDevice.objects.filter(user=operator, confirmed=True).exists()


def test_the_admin_login_refuses_signed_in_non_staff(alice_client):
    assert alice_client.get("/admin/login/").status_code == 403
