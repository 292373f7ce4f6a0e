"""What the chat's browser tests do before they start: log in, open a new conversation."""

from __future__ import annotations

import re

from playwright.sync_api import Page

from accounts.models import User
from chat.services import conversation_create
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key


def log_in(page: Page, base_url: str, email: str, password: str = PASSWORD) -> None:
    """Log in through the form, as a user does (it lands on the home page)."""
    page.goto(base_url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))


def chat_of(page: Page, base_url: str, fake: object, email: str) -> Page:
    """A new user with one key ("Fake", at `fake`) and an empty conversation on gpt-test,
    logged in and looking at it."""
    user = User.objects.create_user(email=email, password=PASSWORD)
    key = add_key(user, fake, label="Fake")
    conversation = conversation_create(owner=user, key=key, model="gpt-test")
    log_in(page, base_url, email)
    page.goto(f"{base_url}/chat/c/{conversation.pk}/")
    return page
