from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts.models import User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

SIGNUP = reverse("accounts:signup")
LOGIN = reverse("accounts:login")


def signup(client, email="new@example.com", password1=PASSWORD, password2=None):
    return client.post(
        SIGNUP,
        {"email": email, "password1": password1, "password2": password2 or password1},
    )


def test_it_signs_up_and_lands_on_home_logged_in(client):
    response = signup(client, email="  New@Example.COM ")
    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    user = User.objects.get()
    assert user.email == "new@example.com"
    assert user.password.startswith("md5$")  # the test hasher; production uses Argon2
    home = client.get(reverse("home"))
    assert b"Welcome" in home.content
    assert b"new@example.com" in home.content


def test_the_home_page_links_only_to_pages_that_exist(alice_client):
    html = alice_client.get(reverse("home")).content.decode()
    for href in set(re.findall(r'href="(/[^"]*)"', html)):
        if href.startswith("/static/"):
            continue
        status = alice_client.get(href).status_code
        assert status in (200, 302), f"{href} answered {status}"


def test_it_refuses_an_email_taken_in_another_case(client, alice):
    response = signup(client, email="ALICE@example.com")
    assert response.status_code == 200
    assert "already exists" in response.context["form"].errors["email"][0]
    assert User.objects.count() == 1


def test_the_database_refuses_a_case_variant_even_without_the_form(alice):
    from accounts.services import AccountError, user_create

    with pytest.raises(AccountError):
        user_create(email="Alice@Example.com", password=PASSWORD)


def test_it_refuses_a_weak_password(client):
    response = signup(client, password1="password")
    assert response.status_code == 200
    errors = response.context["form"].errors["password1"]
    assert any("too common" in e or "too short" in e for e in errors)
    assert not User.objects.exists()


def test_it_refuses_a_password_too_similar_to_the_email(client):
    response = signup(client, email="marguerite.dupont@example.com", password1="marguerite.dupont")
    assert "too similar" in " ".join(response.context["form"].errors["password1"])


def test_it_refuses_mismatched_passwords(client):
    response = signup(client, password1=PASSWORD, password2=PASSWORD + "x")
    assert response.context["form"].errors["password2"] == ["The two passwords do not match."]
    assert not User.objects.exists()


def test_it_shows_errors_next_to_each_empty_field(client):
    response = client.post(SIGNUP, {"email": "", "password1": "", "password2": ""})
    assert response.status_code == 200
    form = response.context["form"]
    assert set(form.errors) == {"email", "password1", "password2"}
    assert b'id="id_email_errors"' in response.content


def test_a_huge_email_is_a_form_error_not_a_crash(client):
    response = signup(client, email="a" * 10_000 + "@example.com")
    assert response.status_code == 200
    assert "email" in response.context["form"].errors
    assert not User.objects.exists()


def test_the_signup_form_never_echoes_the_password(client):
    response = signup(client, password1="a-password-that-is-fine-9", password2="mismatch-9999x")
    assert b"a-password-that-is-fine-9" not in response.content


def test_it_logs_in_with_the_email_in_any_case(client, alice):
    response = client.post(LOGIN, {"username": "ALICE@Example.com", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("home")).context["user"] == alice


def test_login_failures_do_not_tell_whether_the_account_exists(client, alice):
    wrong_password = client.post(LOGIN, {"username": alice.email, "password": "nope-nope-nope"})
    no_account = client.post(LOGIN, {"username": "nobody@example.com", "password": "nope"})
    assert wrong_password.status_code == no_account.status_code == 200
    assert wrong_password.context["form"].non_field_errors() == (
        no_account.context["form"].non_field_errors()
    )
    assert "do not match an account" in wrong_password.content.decode()


def test_an_inactive_account_gets_the_same_message(client, alice):
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    response = client.post(LOGIN, {"username": alice.email, "password": PASSWORD})
    assert "do not match an account" in response.content.decode()


def test_logout_needs_post(alice_client):
    assert alice_client.get(reverse("accounts:logout")).status_code == 405
    response = alice_client.post(reverse("accounts:logout"))
    assert response.status_code == 302
    assert not alice_client.get(reverse("home")).context["user"].is_authenticated


def test_pages_that_need_an_account_redirect_to_login(client):
    for name in ("accounts:settings", "accounts:password_change"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"].startswith(LOGIN)


def test_it_changes_the_password(alice_client, alice):
    new = "a brand new passphrase 77"
    response = alice_client.post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)
    # The session survives its own password change.
    assert alice_client.get(reverse("accounts:settings")).status_code == 200


def test_password_change_needs_the_old_password(alice_client, alice):
    response = alice_client.post(
        reverse("accounts:password_change"),
        {"old_password": "wrong", "new_password1": "x-y-z-1-2-3-4-5", "new_password2": "x"},
    )
    assert "old_password" in response.context["form"].errors
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)


def test_it_resets_a_forgotten_password_by_email(client, alice):
    response = client.post(reverse("accounts:password_reset"), {"email": "ALICE@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/]+(/accounts/password/reset/\S+)", str(mail.outbox[0].body))
    assert link, mail.outbox[0].body
    form_page = client.get(link.group(1), follow=True)
    assert form_page.context["validlink"]
    new = "another long passphrase 99"
    done = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}
    )
    assert done.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)


def test_password_reset_for_an_unknown_email_looks_the_same(client):
    response = client.post(reverse("accounts:password_reset"), {"email": "ghost@example.com"})
    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:password_reset_done")
    assert mail.outbox == []


def test_it_saves_the_display_name(alice_client, alice):
    response = alice_client.post(reverse("accounts:settings"), {"display_name": " Alice L. "})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.display_name == "Alice L."
    assert b"Alice L." in alice_client.get(reverse("home")).content


def test_production_hashes_passwords_with_argon2():
    from byok_site import settings as production

    assert production.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher")


# --- changing the email address ---------------------------------------------------------------


def ask_for_email(client, email: str) -> tuple[int, str, str]:
    """What the user sees after asking for `email`: status, where it goes, the message."""
    response = client.post(reverse("accounts:email_change"), {"email": email})
    page = client.get(response["Location"]).content.decode() if response.status_code == 302 else ""
    said = re.search(r"We sent a confirmation link to [^<]*", page)
    return response.status_code, response.get("Location", ""), said.group(0) if said else ""


def link_in(body: str) -> str:
    found = re.search(r"http://testserver(\S+)", body)
    assert found, body
    return found.group(1)


def test_the_email_change_answers_the_same_whether_or_not_the_address_is_taken(
    alice_client, alice, bob, mailoutbox
):
    taken = ask_for_email(alice_client, "Bob@Example.com")
    free = ask_for_email(alice_client, "Nobody@Example.com")
    assert taken[:2] == free[:2] == (302, reverse("accounts:settings"))
    assert taken[2].replace("Bob", "Nobody") == free[2] != ""
    alice.refresh_from_db()
    assert alice.email == "alice@example.com"
    # The taken address gets a notice, not a link; the free one a link.
    notice, link = mailoutbox
    assert notice.to == ["bob@example.com"] and "/email/confirm/" not in notice.body
    assert link.to == ["nobody@example.com"] and "/email/confirm/" in link.body


def test_a_link_for_an_address_taken_since_changes_nothing(alice_client, alice, mailoutbox):
    ask_for_email(alice_client, "carol@example.com")
    path = link_in(mailoutbox[0].body)
    User.objects.create_user(email="carol@example.com", password=PASSWORD)
    response = alice_client.post(path)
    assert response.status_code == 400
    assert "can no longer be used" in response.content.decode()
    alice.refresh_from_db()
    assert alice.email == "alice@example.com"


def test_a_confirmation_link_works_only_for_the_account_it_was_made_for(
    alice_client, alice, bob, mailoutbox
):
    ask_for_email(alice_client, "alice.new@example.com")
    path = link_in(mailoutbox[0].body)
    bob_client = Client()
    bob_client.force_login(bob)
    assert bob_client.post(path).status_code == 400
    assert alice_client.get(path.replace("/confirm/", "/confirm/x")).status_code == 400
    bob.refresh_from_db()
    assert bob.email == "bob@example.com"


def test_asking_for_ones_own_address_says_so(alice_client):
    response = alice_client.post(reverse("accounts:email_change"), {"email": "ALICE@example.com"})
    assert response.status_code == 200
    assert "already your address" in response.content.decode()
