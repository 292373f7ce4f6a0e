"""Every page fits a phone: no sideways scrolling at 390 px (nor at 1280 px), and on a phone
the things a thumb presses are at least 44 px tall.

The user has what makes pages wide: long key labels (one without a space), a long
conversation title, usage over several models and keys with big token counts and an unknown
price, failed turns, exports, and security-log entries by an operator. Wide tables may
scroll inside their card; the page itself never does.

Each page list is (name, visit) pairs: `visit(page, base_url, seed)` opens the page. To
check another page, add a pair (`at(lambda seed: "/path/")` for a plain address).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib.auth.tokens import default_token_generator
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from playwright.sync_api import FloatRect, Page

from accounts.models import AuditEvent, User
from accounts.services import audit_record
from chat.models import Conversation
from chat.services import conversation_rename
from keys.models import ProviderKey
from ops.roles import OPERATORS
from privacy.models import AccountExport
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key
from tests.operators_helpers import (
    fresh_cache,  # noqa: F401 (a fixture)
    make_staff,
)
from tests.security_helpers import allow_code_reuse, code_for, enrol, make_conversation
from tests.usage_helpers import price
from usage.models import SpendCap
from usage.prices import TokenCounts, price_for
from usage.recording import TurnUsage, usage_record

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_cache"),
]

WIDTHS = (1280, 768, 390)
PHONE = 390
SHOTS = os.environ.get("BYOK_LAYOUT_SHOTS")  # a folder: save each page at each width there
TOUCH_MIN = 44  # px, the smallest comfortable touch target (WCAG 2.5.5, Apple's HIG)

LONG_LABEL = "Research team production key (shared with the lab)"
UNBROKEN_LABEL = "anthropic_backup_key_for_the_nightly_batch_jobs_2026"
LONG_TITLE = "Planning the migration of our analytics warehouse to a columnar store"
MODELS = ("gpt-4o-mini-2024-07-18", "claude-sonnet-4-5-20250929", "gemini-2.5-pro-preview")


@dataclass
class Seed:
    key: ProviderKey
    other_key: ProviderKey
    conversation: Conversation  # titled LONG_TITLE, with turns in the usage tables
    day: str  # YYYY-MM-DD, a day with turns
    reset_path: str  # the user's password reset link


Visit = Callable[[Page, str, Seed], None]


def at(path: Callable[[Seed], str]) -> Visit:
    """A visit that opens one address (made from the seeded rows)."""

    def visit(page: Page, base_url: str, seed: Seed) -> None:
        page.goto(base_url + path(seed))

    return visit


def _key_detail(page: Page, base_url: str, seed: Seed) -> None:
    page.goto(f"{base_url}/keys/{seed.key.pk}/")
    page.locator("#key-usage").wait_for()  # loaded by htmx after the page


def _usage_home(page: Page, base_url: str, seed: Seed) -> None:
    page.goto(base_url + "/usage/")
    page.get_by_text("Figures per day (table)").click()  # the table folded under the charts


ANONYMOUS_PAGES: list[tuple[str, Visit]] = [
    ("landing", at(lambda seed: "/")),
    ("login", at(lambda seed: "/accounts/login/")),
    ("signup", at(lambda seed: "/accounts/signup/")),
    ("password reset", at(lambda seed: "/accounts/password/reset/")),
    ("password reset sent", at(lambda seed: "/accounts/password/reset/sent/")),
    ("password reset link", at(lambda seed: seed.reset_path)),
    ("password reset complete", at(lambda seed: "/accounts/password/reset/complete/")),
]

# A chat that would widen a careless page: an unbroken word, a long code line, a wide table.
WIDE_QUESTION = "Explain " + "x" * 120 + " please"
WIDE_REPLY = (
    "Here:\n\n```python\nvalue = compute("
    + ", ".join(f"argument_{i}" for i in range(30))
    + ")\n```\n\n"
    + "| "
    + " | ".join(f"column {i}" for i in range(14))
    + " |\n"
    + "|"
    + "---|" * 14
    + "\n| "
    + " | ".join(str(10**i) for i in range(14))
    + " |\n\n"
    + "$$\n\\sum_{i=1}^{n} "
    + " + ".join(f"a_{{{i}}}" for i in range(40))
    + "\n$$\n"
)

USER_PAGES: list[tuple[str, Visit]] = [
    ("home", at(lambda seed: "/")),
    ("settings", at(lambda seed: "/accounts/settings/")),
    ("2FA setup", at(lambda seed: "/accounts/2fa/setup/")),
    ("sudo", at(lambda seed: "/accounts/confirm/")),
    ("email change", at(lambda seed: "/accounts/email/")),
    ("email change link, expired", at(lambda seed: "/accounts/email/confirm/expired-link/")),
    ("password change", at(lambda seed: "/accounts/password/change/")),
    ("security log", at(lambda seed: "/accounts/security-log/")),
    ("keys list", at(lambda seed: "/keys/")),
    ("key add", at(lambda seed: "/keys/add/")),
    ("key detail", _key_detail),
    ("key replace", at(lambda seed: f"/keys/{seed.key.pk}/replace/")),
    ("key revoke", at(lambda seed: f"/keys/{seed.other_key.pk}/revoke/")),
    ("key delete", at(lambda seed: f"/keys/{seed.other_key.pk}/delete/")),
    ("usage", _usage_home),
    ("usage day", at(lambda seed: f"/usage/day/{seed.day}/")),
    ("spend caps", at(lambda seed: "/usage/caps/")),
    ("export", at(lambda seed: "/accounts/export/")),
    ("delete account", at(lambda seed: "/accounts/delete/")),
    ("chat home", at(lambda seed: "/chat/")),
    ("conversation", at(lambda seed: f"/chat/c/{seed.conversation.pk}/")),
    ("conversation settings", at(lambda seed: f"/chat/c/{seed.conversation.pk}/settings/")),
    ("conversation delete", at(lambda seed: f"/chat/c/{seed.conversation.pk}/delete/")),
]


def _recovery_codes(page: Page, base_url: str, seed: Seed) -> None:
    page.goto(base_url + "/accounts/settings/")
    page.get_by_role("button", name="New recovery codes").click()
    page.wait_for_url(re.compile(r"/accounts/2fa/recovery-codes/"))


STAFF_PAGES: list[tuple[str, Visit]] = [
    ("operator dashboard", at(lambda seed: "/admin/")),
    ("recovery codes", _recovery_codes),
]

# What a thumb presses on a phone: navigation, buttons, form controls, button-like links
# (the operator site's header and lists too).
TOUCH_TARGETS = (
    ".main-nav a, .account a, .account button, .button, button, summary, select, textarea, "
    "input:not([type=checkbox]):not([type=radio]):not([type=hidden]), "
    ".crumbs a, .plain-list a, .pager a, #user-tools a, .dash-lists a"
)


# The elements that stick out past the window, or whose text overflows them, and are not
# inside a box that scrolls or clips them.
OVERFLOWING = """(limit) => [...document.querySelectorAll('body *')]
  .filter(e => {
    const sticksOut = e.getBoundingClientRect().right > limit + 0.5
      || (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === 'visible');
    let box = e.parentElement;
    while (box && box !== document.body) {
      if (getComputedStyle(box).overflowX !== 'visible') return false;
      box = box.parentElement;
    }
    return sticksOut;
  })
  .slice(-5)
  .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')
    + ' "' + e.textContent.trim().slice(0, 30) + '"')"""


# Tables whose box scrolls or clips them: their last columns (the cost) are out of sight.
CLIPPED_TABLES = """[...document.querySelectorAll('table')]
  .filter(t => t.offsetParent !== null)
  .map(t => [t, t.parentElement])
  .filter(([t, box]) => getComputedStyle(box).overflowX !== 'visible'
    && box.scrollWidth > box.clientWidth + 1)
  .map(([t, box]) => `${t.id || t.className || 'table'} ${box.scrollWidth}>${box.clientWidth}`)"""

# Ordinary words (four letters or more, not part of a name like a_key_label or an address)
# that the page breaks across two lines, in text a reader sees.
BROKEN_WORDS = r"""() => {
  const hidden = (element) => {
    for (let box = element; box; box = box.parentElement) {
      const style = getComputedStyle(box);
      if (style.clipPath !== 'none' || style.display === 'none') return true;
    }
    return false;
  };
  // An ordinary word: 4 to 40 letters (a longer run, as in WIDE_QUESTION, has to break).
  const word = /(?<![\w.@\/-])[A-Za-z]{4,40}(?![\w.@\/-])/g;
  const broken = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.parentElement || hidden(node.parentElement)) continue;
    const closed = node.parentElement.closest("details:not([open])");
    if (closed && !node.parentElement.closest("summary")) continue;  // inside a closed <details>
    for (const match of node.data.matchAll(word)) {
      const range = document.createRange();
      range.setStart(node, match.index);
      range.setEnd(node, match.index + match[0].length);
      const lines = new Set([...range.getClientRects()].map(rect => Math.round(rect.top)));
      if (lines.size > 1) broken.add(match[0]);
    }
  }
  return [...broken].slice(0, 8);
}"""

# Touch targets (of TOUCH_TARGETS) shown and shorter than the least height, with their size.
SMALL_TARGETS = """([selector, least]) => [...document.querySelectorAll(selector)]
  .filter(e => e.offsetParent !== null)
  .map(e => [e.tagName.toLowerCase(), (e.innerText || e.name || e.type).trim().slice(0, 30),
             e.getBoundingClientRect().height])
  .filter(([, , height]) => height < least - 0.5)  // less half a pixel: subpixel rounding
  .map(([tag, text, height]) => `${tag} "${text}" ${height.toFixed(1)}px`)"""


def _widths(page: Page) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")


def _screenshots(page: Page, stem: str) -> None:
    """The whole page in pieces a picture viewer shows at full size."""
    width, height = page.evaluate("[window.innerWidth, document.documentElement.scrollHeight]")
    for number, top in enumerate(range(0, height, 1000)):
        clip = FloatRect(x=0, y=top, width=width, height=min(1000, height - top))
        page.screenshot(path=f"{stem}-{number}.png", full_page=True, clip=clip)


def _width_problems(page: Page, name: str) -> list[str]:
    """Each width at which the page scrolls sideways (and what sticks out), a table is cut
    or a word is broken in two."""
    found = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 844 if width == PHONE else 800})
        scroll_width, inner_width = _widths(page)
        if SHOTS:
            slug = re.sub(r"\W+", "-", name)
            _screenshots(page, f"{SHOTS}/layout-{slug}-{width}")
            print(f"{name} @ {width}: scrollWidth {scroll_width}")  # the figures, with -s
        if scroll_width > inner_width:
            culprits = page.evaluate(OVERFLOWING, inner_width)
            found.append(f"{name} at {width} px: scrollWidth {scroll_width} {culprits}")
        hidden = page.evaluate(CLIPPED_TABLES)
        if hidden:
            found.append(f"{name} at {width} px: tables cut by their box {hidden}")
        broken = page.evaluate(BROKEN_WORDS)
        if broken:
            found.append(f"{name} at {width} px: words broken mid-word {broken}")
    return found


def _small_targets(page: Page, name: str) -> list[str]:
    page.set_viewport_size({"width": PHONE, "height": 844})
    small = page.evaluate(SMALL_TARGETS, [TOUCH_TARGETS, TOUCH_MIN])
    return [f"{name}: {target}" for target in small]


def _log_in(page: Page, base_url: str, email: str) -> None:
    page.goto(base_url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def _turn(user, key, conversation_id, model, *, status="done", error_kind="", scale=1):
    usage_record(
        turn=TurnUsage(
            owner_id=user.pk,
            message_id=uuid.uuid4(),
            conversation_id=conversation_id,
            key_id=key.pk,
            key_label=key.label,
            preset=key.preset,
            model=model,
            status=status,
            error_kind=error_kind,
            tokens=TokenCounts(input=1_234_567 * scale, output=345_678 * scale),
            reasoning_tokens=0,
            ttft_ms=1234,
            latency_ms=98765,
            price=price_for(key.preset, model),
        )
    )


def _seed(fake_provider) -> tuple[User, Seed]:
    user = User.objects.create_user(
        email="layout.person.with.a.long.address@example.com",
        password=PASSWORD,
        display_name="Maximiliana Featherstonehaugh",
    )
    key = add_key(user, fake_provider, label=LONG_LABEL)
    other_key = add_key(
        user, fake_provider, label=UNBROKEN_LABEL, secret="sk-test-other-9876543210"
    )
    ProviderKey.objects.filter(owner=user).update(status=ProviderKey.Status.VALID)
    key.refresh_from_db()
    other_key.refresh_from_db()
    for model in MODELS[:2]:  # the third model's price is unknown
        price(key.preset, model, input=2.5, output=10.0)
    conversation = make_conversation(user, key, WIDE_QUESTION, reply=WIDE_REPLY)
    conversation_rename(conversation=conversation, title=LONG_TITLE)
    for scale, model in enumerate(MODELS, start=1):
        _turn(user, key, conversation.pk, model, scale=scale)
        _turn(user, other_key, None, model, scale=scale)
    _turn(user, other_key, None, MODELS[1], status="error", error_kind="rate_limited")
    SpendCap.objects.create(owner=user, limit_micro=50_000_000)  # past 80%: a banner
    SpendCap.objects.create(owner=user, key_id=key.pk, limit_micro=1_000_000_000)

    operator = User.objects.create_user(email="someone@example.com", password=PASSWORD)
    audit_record(
        owner=user,
        actor=operator,
        action=AuditEvent.Action.KEY_REVOKED,
        target_id=str(other_key.pk),
        target_label=UNBROKEN_LABEL,
        details={"reason": "reported_as_leaked_in_a_public_repository"},
    )
    audit_record(
        owner=user,
        action=AuditEvent.Action.OPERATOR_CHANGED,
        actor=operator,
        details={"fields": "display_name, email, is_active"},
    )
    audit_record(
        owner=user,
        action=AuditEvent.Action.LOGIN_SUCCEEDED,
        actor=user,
        ip_address="2001:db8:85a3:0000:0000:8a2e:0370:7334",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
    )
    now = timezone.now()
    AccountExport.objects.create(
        owner=user,
        status=AccountExport.Status.FAILED,
        error_message="The archive could not be written: the disk of the worker was full.",
        expires_at=now + timedelta(days=1),
    )
    AccountExport.objects.create(
        owner=user, status=AccountExport.Status.READY, expires_at=now + timedelta(days=1)
    )
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    reset_path = f"/accounts/password/reset/{uid}/{default_token_generator.make_token(user)}/"
    return user, Seed(
        key=key,
        other_key=other_key,
        conversation=conversation,
        day=timezone.localdate().isoformat(),
        reset_path=reset_path,
    )


def _walk(
    page: Page, base_url: str, seed: Seed, pages: list[tuple[str, Visit]]
) -> tuple[list[str], list[str]]:
    """Open each page at desktop width, then measure it at each width."""
    wide: list[str] = []
    small: list[str] = []
    for name, visit in pages:
        page.set_viewport_size({"width": 1280, "height": 800})
        visit(page, base_url, seed)
        page.wait_for_load_state("load")
        wide += _width_problems(page, name)
        small += _small_targets(page, name)
    return wide, small


def test_every_page_fits_a_phone_and_a_desktop_and_has_thumb_sized_targets(
    page, live_server, fake_provider
):
    user, seed = _seed(fake_provider)
    wide, small = _walk(page, live_server.url, seed, ANONYMOUS_PAGES)

    _log_in(page, live_server.url, user.email)
    page.wait_for_url(re.compile(r"/$"))
    found = _walk(page, live_server.url, seed, USER_PAGES)
    wide += found[0]
    small += found[1]

    assert not wide, "pages that scroll sideways, cut a table or break a word:\n" + "\n".join(wide)
    assert not small, f"touch targets under {TOUCH_MIN} px at {PHONE} px:\n" + "\n".join(small)


def test_the_operator_pages_fit_a_phone_and_a_desktop(page, live_server, fake_provider):
    _user, seed = _seed(fake_provider)  # turns for the dashboard's tables and charts
    operator = make_staff("operator.on.duty@example.com", role=OPERATORS)
    device, _codes = enrol(operator)
    allow_code_reuse(device)

    _log_in(page, live_server.url, operator.email)
    page.wait_for_url(re.compile(r"/accounts/login/verify/"))
    wide = _width_problems(page, "login verify")
    small = _small_targets(page, "login verify")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.locator("input[name=token]").fill(code_for(device))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(re.compile(r"/$"))
    found = _walk(page, live_server.url, seed, STAFF_PAGES)
    wide += found[0]
    small += found[1]

    assert not wide, "pages that scroll sideways, cut a table or break a word:\n" + "\n".join(wide)
    assert not small, f"touch targets under {TOUCH_MIN} px at {PHONE} px:\n" + "\n".join(small)
