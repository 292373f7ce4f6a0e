from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.models import User
from chat.models import Message
from tests.browser.helpers import chat_of, log_in
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def chat_page(page, asgi_server, fake_provider, celery_worker):
    return chat_of(page, asgi_server.url, fake_provider, "chatter@example.com")


def test_text_arrives_in_pieces_survives_a_reload_and_finishes(chat_page, fake_provider):
    page = chat_page
    words = [f"piece{i}" for i in range(40)]
    fake_provider.script(text=" ".join(words), tokens_per_second=25, path="/chat/completions")
    page.get_by_label("Message").fill("Tell me something long")
    page.get_by_label("Message").press("Enter")

    reply = page.locator("article.message.assistant").last
    expect(reply.locator("[data-role=body]")).to_contain_text("piece3", timeout=10_000)
    partial = reply.locator("[data-role=body]").inner_text()
    assert "piece39" not in partial  # arrived in pieces, before the end
    expect(page.get_by_label("Message")).to_be_enabled()  # one can type the next message
    expect(page.locator("[aria-current=page] .title")).to_have_text("Tell me something long")

    page.reload()
    reply = page.locator("article.message.assistant").last
    expect(reply.locator("[data-role=body]")).to_contain_text("piece39", timeout=15_000)
    expect(reply.get_by_role("button", name="Regenerate")).to_be_visible()
    text = reply.locator("[data-role=body]").inner_text()
    assert text.count("piece1 ") == 1  # nothing duplicated by the reload
    expect(page.get_by_label("Message")).to_be_enabled()
    assert Message.objects.filter(role="assistant", status="done").count() == 1
    expect(reply.locator("[data-role=via]")).to_have_text("via Fake")
    expect(reply.locator("[data-role=usage]")).to_contain_text("out · price unknown · first token")


def test_a_refused_message_says_why_next_to_the_composer_and_keeps_the_text(
    chat_page, fake_provider
):
    from django.utils import timezone

    from usage.models import NO_KEY, MonthlySpend
    from usage.services import spend_cap_set

    page = chat_page
    user = User.objects.get(email="chatter@example.com")
    spend_cap_set(owner=user, key_id=None, limit_micro=10_000)
    MonthlySpend.objects.filter(
        owner=user, key_id=NO_KEY, month=timezone.localdate().replace(day=1)
    ).update(spent_micro=10_000)
    page.get_by_label("Message").fill("Is there budget left?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator("#composer-error")).to_contain_text("you have reached your monthly spend")
    expect(page.get_by_label("Message")).to_have_value("Is there budget left?")
    assert not Message.objects.filter(role="assistant").exists()

    page.get_by_label("Message").fill("   ")  # passes `required`; the server says what is wrong
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#composer-error")).to_have_text("Type a message first.")


def test_the_stop_button_ends_a_turn_and_keeps_what_arrived(chat_page, fake_provider):
    page = chat_page
    fake_provider.script(
        text=" ".join(["slow"] * 300), tokens_per_second=15, path="/chat/completions"
    )
    page.get_by_label("Message").fill("Go slowly")
    page.get_by_role("button", name="Send").click()
    reply = page.locator("article.message.assistant").last
    expect(reply.locator("[data-role=body]")).to_contain_text("slow", timeout=10_000)
    reply.get_by_role("button", name="Stop").click()
    expect(reply.locator("[data-role=state]")).to_have_text("Stopped", timeout=5_000)
    expect(reply.get_by_role("button", name="Regenerate")).to_be_visible()
    expect(reply.locator("[data-role=via]")).to_have_text("via Fake")  # live, no reload
    expect(reply.locator("[data-role=usage]")).to_contain_text("≈ ")  # estimated, as billed
    message = Message.objects.get(role="assistant")
    assert message.status == "stopped"


def test_an_error_is_shown_in_words_with_a_retry(chat_page, fake_provider):
    page = chat_page
    fake_provider.script(error="invalid_key", path="/chat/completions")
    page.get_by_label("Message").fill("Hello?")
    page.get_by_label("Message").press("Enter")
    reply = page.locator("article.message.assistant").last
    expect(reply.locator("[data-role=error]")).to_contain_text("rejected", timeout=10_000)
    expect(reply.get_by_role("button", name="Retry")).to_be_visible()
    # The way to the fix: a link to the keys, live and after a reload alike.
    expect(reply.get_by_role("link", name="Open your keys.")).to_have_attribute("href", "/keys/")
    page.reload()
    reply = page.locator("article.message.assistant").last
    expect(reply.get_by_role("link", name="Open your keys.")).to_have_attribute("href", "/keys/")
    expect(reply.locator("[data-role=error]")).to_contain_text("rejected")


# Sets `window.suggested`: a promise kept once the next htmx swap has settled and chat.js's
# own handlers have run (await it with page.evaluate("window.suggested")).
SETTLED = """() => {
  window.suggested = new Promise((done) => {
    const settled = () => setTimeout(done);
    document.body.addEventListener("htmx:afterSettle", settled, {once: true});
  });
}"""


def in_view(page, locator) -> bool:
    box = locator.bounding_box()
    height = page.evaluate("window.innerHeight")
    return box is not None and box["y"] < height and box["y"] + box["height"] > 0


def test_the_page_follows_the_newest_message_unless_the_reader_scrolls_up(
    chat_page, fake_provider, asgi_server
):
    page = chat_page
    page.set_viewport_size({"width": 1000, "height": 600})
    long_text = " ".join(["line"] * 400)
    replies = page.locator("article.message.assistant")
    for turn in range(1, 4):  # a conversation taller than the window
        fake_provider.script(text=long_text, path="/chat/completions")
        expect(page.get_by_label("Message")).to_be_enabled()
        page.get_by_label("Message").fill("Tell me more")
        page.get_by_label("Message").press("Enter")
        expect(replies).to_have_count(turn)
        reply = replies.last
        expect(reply.get_by_role("button", name="Regenerate")).to_be_visible(timeout=15_000)
        assert in_view(page, reply.locator("[data-role=body]")), "the reply was sent off-screen"
    page.reload()
    last = page.locator("article.message.assistant").last
    expect(last).to_be_visible()
    assert in_view(page, last), "a conversation opens at its newest message"
    # A reader who scrolls up to read is left there while a reply streams in.
    fake_provider.script(
        text=" ".join(["slow"] * 200), tokens_per_second=40, path="/chat/completions"
    )
    page.get_by_label("Message").fill("Slowly now")
    page.get_by_label("Message").press("Enter")
    expect(replies).to_have_count(4)
    reply = replies.last
    expect(reply.locator("[data-role=body]")).to_contain_text("slow", timeout=10_000)
    page.evaluate("window.scrollTo(0, 0)")
    # More of the reply arrives (each delta would scroll a reader who follows)...
    page.wait_for_function(
        """([id, seen]) => document.querySelector('#' + id + ' [data-role=body]')
             .innerText.length > seen + 40""",
        arg=[reply.get_attribute("id"), len(reply.locator("[data-role=body]").inner_text())],
    )
    assert page.evaluate("window.scrollY") < 50, "the page pulled the reader back down"


def test_a_new_chat_starts_with_the_key_s_first_model_and_keeps_a_typed_one(
    page, asgi_server, fake_provider
):
    user = User.objects.create_user(email="newchat@example.com", password=PASSWORD)
    work = str(add_key(user, fake_provider, label="Work", preset="openai", base_url=None).pk)
    claude = str(add_key(user, fake_provider, label="Claude", preset="anthropic", base_url=None).pk)
    log_in(page, asgi_server.url, user.email)
    page.goto(asgi_server.url + "/chat/")

    model = page.get_by_label("Model")
    key = page.get_by_label("Key")
    key.select_option(value=work)
    expect(model).to_have_value("gpt-5.4")  # the first suggestion, not an empty field
    key.select_option(value=claude)
    expect(model).to_have_value("claude-opus-4-7")  # still a suggestion: it follows the key
    model.fill("claude-haiku-4-5")
    page.evaluate(SETTLED)
    key.select_option(value=work)
    page.evaluate("window.suggested")  # the new suggestions have come and been handled
    expect(model).to_have_value("claude-haiku-4-5")  # typed by the user: kept


@pytest.mark.parametrize("width", [1280, 390])
def test_a_message_sent_while_a_reply_streams_waits_for_it_and_esc_stops(
    chat_page, fake_provider, width
):
    page = chat_page
    page.set_viewport_size({"width": width, "height": 844 if width == 390 else 800})
    fake_provider.script(
        text=" ".join(["slow"] * 400), tokens_per_second=15, path="/chat/completions"
    )
    box = page.get_by_label("Message")
    box.fill("First question")
    box.press("Enter")
    reply = page.locator("article.message.assistant").last
    expect(reply.locator("[data-role=body]")).to_contain_text("slow", timeout=10_000)
    reply = page.locator("#" + reply.get_attribute("id"))  # this reply, whatever comes next
    box.fill("Second question, typed while the reply streams")
    box.press("Enter")
    expect(page.locator("#composer-queued")).to_be_visible()
    assert Message.objects.filter(role="user").count() == 1  # waits: one turn at a time

    fake_provider.script(text="The second answer", path="/chat/completions")
    page.keyboard.press("Escape")  # stops the reply being written
    expect(reply.locator("[data-role=state]")).to_have_text("Stopped", timeout=10_000)
    # ...and the waiting message goes by itself, answered.
    expect(page.locator("article.message.assistant").nth(1)).to_contain_text(
        "The second answer", timeout=15_000
    )
    expect(page.locator("#composer-queued")).to_be_hidden()
    assert Message.objects.filter(role="user").count() == 2
    assert Message.objects.get(role="assistant", status="stopped")


@pytest.mark.parametrize("width", [1280, 390])
def test_a_new_chat_is_a_composer_and_the_first_message_creates_it(
    page, asgi_server, fake_provider, celery_worker, width
):
    from chat.models import Conversation
    from keys.models import ProviderKey

    page.set_viewport_size({"width": width, "height": 844 if width == 390 else 800})
    user = User.objects.create_user(email="starter@example.com", password=PASSWORD)
    from tests.keys_helpers import wait_for_status

    wrong = wait_for_status(add_key(user, fake_provider, label="Broken"))
    good = wait_for_status(add_key(user, fake_provider, label="Good"))  # its check is over
    ProviderKey.objects.filter(pk=wrong.pk).update(status="invalid")
    ProviderKey.objects.filter(pk=good.pk).update(status="valid")
    log_in(page, asgi_server.url, user.email)
    page.goto(asgi_server.url + "/chat/")

    key = page.get_by_label("Key")
    expect(key).to_have_value(str(good.pk))  # the valid key, listed first; never the broken one
    assert key.locator("option").first.inner_text().startswith("Good")
    box = page.get_by_label("Message")
    expect(box).to_be_focused()  # ready to type at once
    page.get_by_label("Model").fill("gpt-test")
    fake_provider.script(text="Hello from the model", path="/chat/completions")
    box.fill("Hi there")
    box.press("Enter")
    page.wait_for_url(re.compile(r"/chat/c/[0-9a-f-]+/$"))
    reply = page.locator("article.message.assistant").last
    expect(reply.locator("[data-role=body]")).to_contain_text(
        "Hello from the model", timeout=15_000
    )
    conversation = Conversation.objects.get(owner=user)
    assert conversation.provider_key_id == good.pk and conversation.model == "gpt-test"
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("width", [1280, 390])
def test_the_model_switches_inside_a_conversation_and_each_reply_says_who_wrote_it(
    chat_page, fake_provider, width
):
    from keys.models import ProviderKey

    page = chat_page
    page.set_viewport_size({"width": width, "height": 844 if width == 390 else 800})
    user = User.objects.get(email="chatter@example.com")
    other = add_key(user, fake_provider, label="Backup")
    ProviderKey.objects.filter(pk=other.pk).update(status="valid")
    page.reload()
    fake_provider.script(text="First answer", path="/chat/completions")
    page.get_by_label("Message").fill("One")
    page.get_by_label("Message").press("Enter")
    first = page.locator("article.message.assistant").first
    expect(first.locator("[data-role=via]")).to_have_text("via Fake", timeout=15_000)

    page.get_by_label("Key").select_option(value=str(other.pk))
    page.get_by_label("Model").fill("gpt-other")
    fake_provider.script(text="Second answer", path="/chat/completions")
    page.get_by_label("Message").fill("Two")
    page.get_by_label("Message").press("Enter")
    second = page.locator("article.message.assistant").nth(1)
    expect(second.locator("[data-role=via]")).to_have_text("via Backup", timeout=15_000)
    expect(second.locator(".who")).to_have_text("gpt-other")
    expect(first.locator(".who")).to_have_text("gpt-test")
    expect(page.locator("#chat-model")).to_contain_text("gpt-other · Backup")
    page.reload()  # the switch is the conversation's now
    expect(page.get_by_label("Model")).to_have_value("gpt-other")
    expect(page.get_by_label("Key")).to_have_value(str(other.pk))


@pytest.mark.parametrize("width", [1280, 390])
def test_copy_puts_the_whole_reply_on_the_clipboard_as_markdown(chat_page, fake_provider, width):
    page = chat_page
    page.set_viewport_size({"width": width, "height": 844 if width == 390 else 800})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    markdown = "**Bold** answer\n\n- one\n- two\n\n```python\nx = 1\n```"
    fake_provider.script(text=markdown, path="/chat/completions")
    page.get_by_label("Message").fill("Format something")
    page.get_by_label("Message").press("Enter")
    reply = page.locator("article.message.assistant").last
    expect(reply.get_by_role("button", name="Regenerate")).to_be_visible(timeout=15_000)
    reply.get_by_role("button", name="Copy the reply as Markdown").click()
    expect(reply.get_by_role("button", name="Copy the reply as Markdown")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == markdown


def test_model_suggestions_never_land_in_the_box_while_one_types_in_it(
    page, asgi_server, fake_provider
):
    """The key's suggestions come by htmx; one arriving while the user types in the model
    box (an empty one, say) must leave it alone."""
    user = User.objects.create_user(email="typist@example.com", password=PASSWORD)
    work = add_key(user, fake_provider, label="Work", preset="openai", base_url=None)
    log_in(page, asgi_server.url, user.email)
    page.goto(asgi_server.url + "/chat/")
    model = page.get_by_label("Model")
    model.fill("")  # the box has focus, empty
    page.evaluate(SETTLED)
    page.evaluate(
        """(id) => {
          const key = document.getElementById("composer-key");
          key.value = id;
          key.dispatchEvent(new Event("change", {bubbles: true}));  // focus stays put
        }""",
        str(work.pk),
    )
    page.evaluate("window.suggested")  # the suggestions have come and been handled
    expect(page.locator("#model-options option").first).to_have_attribute("value", "gpt-5.4")
    expect(model).to_be_focused()
    expect(model).to_have_value("")
