"""Titles written by the model, for owners who opted in (`User.model_titles`).

After a conversation's first reply is done, one short call asks the model that wrote it,
with the key that answered, for a title of at most six words, given the first message and
the start of the reply. It is a call like any other on the completion engine
(`TitleWriting` is its sink): admitted under the owner's rate limits and spend caps before
it is queued, its key chosen by the engine's rule, its worst case reserved, its usage
recorded as an event of its own (purpose "title"), its key's use noted. It never streams to
the page and stores nothing of its text but the title, sealed, and only while the title is
still the first message's (`Conversation.title_source`): a rename meanwhile is kept. A cap
or rate limit that refuses it, a provider error, an empty answer: the first message's title
stays, and nothing is shown to the user.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from chat.models import PURPOSE_MESSAGE, PURPOSE_TITLE, Conversation, Message, TitleCall
from chat.models import TitleSource as Source
from chat.services import _title_from
from completion import admission, engine
from completion.engine import Call, KeyChoice, Outcome, Prompt, Refused
from providers.catalog import PRESETS, model_reasoning
from providers.reasoning import ReasoningStyle
from providers.types import ChatMessage, Role
from usage.models import UsageEvent
from usage.prices import TokenCounts
from vault.services import OwnerCipher

logger = logging.getLogger(__name__)

Status = TitleCall.Status

TITLE_WORDS = 6
FIRST_MESSAGE_CHARS = 1000
REPLY_START_CHARS = 600
INSTRUCTIONS = (
    f"You write titles for chat conversations. Reply with a title of at most {TITLE_WORDS} "
    "words for the conversation below, in its language: plain text on one line, no quotes, "
    "no Markdown, no full stop, nothing else."
)

# What a model puts around a title although asked not to: "Title:", "**Title:**" or
# "**Title**:" before it, quotes around it.
_LABEL = re.compile(
    r"^\s*(?:(\*\*|__)title\s*:\s*\1|(\*\*|__)title\2\s*:|title\s*:)\s*", re.IGNORECASE
)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb\u201e"  # straight, curly, guillemets


def title_clean(text: str) -> str:
    """The model's answer as a title: its first line, without a "Title:" label, Markdown
    left out and clipped as a first message's title is (`_title_from`), without quotes
    around it or a full stop after it. Empty when nothing is left."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = _LABEL.sub("", line).strip().strip(_QUOTES).strip()
    if not line:
        return ""
    title = _title_from(line).strip().strip(_QUOTES).strip()
    return title.rstrip(".").strip() if not title.endswith("…") else title


# --- queueing, after the first reply ----------------------------------------------------


def title_call_queue(*, reply_id: uuid.UUID | str) -> TitleCall | None:
    """After a reply ended: queue the model's title call when the reply is done and answers
    the conversation's first message, the owner opted in, the title is still the first
    message's and no title call was made for the conversation yet (at most one, ever).

    Admitted like a chat turn (`completion.admission`: a cap that is used up, a rate limit);
    a refusal skips it quietly (the call is marked skipped, nothing is recorded). Returns
    the queued call, or None.
    """
    reply = (
        Message.objects.select_related("conversation", "owner", "parent", "provider_key")
        .filter(pk=reply_id, role=Message.Role.ASSISTANT, status=Message.Status.DONE)
        .first()
    )
    if reply is None or not reply.owner.model_titles:
        return None
    conversation = reply.conversation
    question = reply.parent
    key = reply.provider_key
    if conversation.title_source != Source.MESSAGE or key is None:
        return None
    if question is None or question.parent_id is not None:
        return None  # not the first message's reply
    with transaction.atomic():
        call, created = TitleCall.objects.get_or_create(
            conversation=conversation, defaults={"owner": reply.owner, "reply": reply}
        )
    if not created:
        return None  # one title call per conversation (a second delivery of the turn too)
    try:
        admission.admit(owner=reply.owner, call_id=call.pk, key_id=key.pk, key_label=key.label)
    except Refused as refused:
        _skip(call.pk, Status.QUEUED)
        logger.info("title call %s skipped at admission (%s)", call.pk, refused.kind)
        return None
    _enqueue(call)
    return call


def _enqueue(call: TitleCall) -> None:
    from chat.tasks import write_title

    call_id = str(call.pk)  # SECURITY: the id only; the task opens the text itself

    def send() -> None:
        try:
            write_title.delay(call_id)
        except Exception:  # the broker is away: no title call, the first message's title stays
            logger.warning("title call %s could not be queued", call_id, exc_info=True)
            if _skip(call.pk, Status.QUEUED):
                admission.release(owner=call.owner, call_id=call.pk)

    transaction.on_commit(send)


def _skip(call_id: uuid.UUID, open_status: str) -> bool:
    return bool(
        TitleCall.objects.filter(pk=call_id, status=open_status).update(
            status=Status.SKIPPED, finished_at=timezone.now()
        )
    )


# --- the call, on a worker ------------------------------------------------------------------


def run_title_call(call_id: uuid.UUID | str) -> None:
    """Claim and run one title call. Safe to call twice: only the first call does anything."""
    engine.run(TitleWriting(call_id))


def _title_calls() -> QuerySet[TitleCall]:
    """A title call with what its call reads: the conversation, the owner, the reply (its
    key, and the message it answers)."""
    return TitleCall.objects.select_related(
        "conversation", "owner", "reply__parent", "reply__provider_key"
    )


def title_engine_call(title_call: TitleCall) -> Call | None:
    """The engine's call for a title call (its conversation, owner and reply loaded): the
    reply's model, with the key that answered it first (then the engine's fallback to the
    owner's other keys for the same server), at most BYOK_TITLE_MAX_OUTPUT_TOKENS. None when
    there is nothing to title with (the reply or its key is gone)."""
    reply = title_call.reply
    key = reply.provider_key if reply is not None else None
    if reply is None or key is None:
        return None
    return Call(
        call_id=title_call.pk,
        owner=title_call.owner,
        choice=KeyChoice(preset=key.preset, base_url=key.base_url or None, key_id=key.pk),
        model=reply.model or title_call.conversation.model,
        max_output_tokens=settings.BYOK_TITLE_MAX_OUTPUT_TOKENS,
        group_id=title_call.conversation_id,
        reasoning_effort=_least_effort(key.preset, reply.model),
        purpose=UsageEvent.Purpose.TITLE.value,
    )


def _least_effort(preset_name: str, model: str) -> str | None:
    """ "low" for a model that reasons by OpenAI's effort (its reasoning would otherwise eat
    the few tokens a title has); nothing for the others (Claude and Gemini think only when
    asked)."""
    preset = PRESETS.get(preset_name)
    if preset is not None and model_reasoning(preset, model) is ReasoningStyle.OPENAI_EFFORT:
        return "low"
    return None


class TitleWriting:
    """The engine's sink for one title call. `open_status` is the status the call must
    still have for its outcome to be stored (running, on the worker; the reaper's too)."""

    def __init__(
        self,
        call_id: uuid.UUID | str,
        *,
        title_call: TitleCall | None = None,
        open_status: str = Status.RUNNING,
    ) -> None:
        self.call_id = call_id
        self.title_call = title_call
        self.open_status = open_status

    def claim(self) -> Call | None:
        claimed = TitleCall.objects.filter(pk=self.call_id, status=Status.QUEUED).update(
            status=Status.RUNNING, started_at=timezone.now()
        )
        if not claimed:
            return None
        title_call = self.title_call = _title_calls().get(pk=self.call_id)
        call = title_engine_call(title_call)
        moot = (
            title_call.conversation.title_source != Source.MESSAGE
            or not title_call.owner.model_titles
        )
        if call is None or moot:
            # Renamed, turned off, or nothing to title with: no call, nothing recorded.
            _skip(title_call.pk, Status.RUNNING)
            admission.release(owner=title_call.owner, call_id=title_call.pk)
            return None
        return call

    def prompt(self, cipher: OwnerCipher) -> Prompt:
        reply = self._title_call().reply
        question = reply.parent if reply is not None else None
        if reply is None or question is None:
            raise Refused("bad_request", "There is no message to title.")
        first = cipher.open(PURPOSE_MESSAGE, question.pk, question.sealed_content)
        answer = cipher.open(PURPOSE_MESSAGE, reply.pk, reply.sealed_content)
        if not first.strip():
            raise Refused("bad_request", "There is no message to title.")
        content = (
            f"First message:\n{first[:FIRST_MESSAGE_CHARS]}\n\n"
            f"Start of the reply:\n{answer[:REPLY_START_CHARS]}"
        )
        return Prompt(messages=[ChatMessage(Role.USER, content)], system_prompt=INSTRUCTIONS)

    def delta(self, text: str) -> None:
        """Nothing: a title never streams to the page."""

    def checkpoint(self, text: str, tokens: TokenCounts, cipher: OwnerCipher) -> None:
        """Nothing: of a title call's text only the finished title is stored."""

    def store(self, outcome: Outcome, cipher: OwnerCipher | None) -> bool:
        title_call = self._title_call()
        done = outcome.status == engine.DONE
        closed = TitleCall.objects.filter(pk=title_call.pk, status=self.open_status).update(
            status=Status.DONE if done else Status.FAILED, finished_at=timezone.now()
        )
        if not closed:
            return False
        title = title_clean(outcome.text) if done else ""
        if title and cipher is not None:
            conversation_id = title_call.conversation_id
            # SECURITY: sealed like every title. Conditional: a rename meanwhile is kept.
            Conversation.objects.filter(pk=conversation_id, title_source=Source.MESSAGE).update(
                sealed_title=cipher.seal(PURPOSE_TITLE, conversation_id, title),
                title_source=Source.MODEL,
            )
        elif not done:
            logger.info(
                "title call %s ended %s (%s)",
                title_call.pk,
                outcome.status,
                outcome.error_kind or "no kind",
            )
        return True

    def published(self, outcome: Outcome, cipher: OwnerCipher | None) -> None:
        """Nothing: the page shows the new title when it next loads the conversation list."""

    def _title_call(self) -> TitleCall:
        assert self.title_call is not None, "claim the title call first"
        return self.title_call


# --- the reaper ---------------------------------------------------------------------------


def title_calls_reap() -> int:
    """End title calls nobody will finish: one queued that no worker claimed within
    BYOK_QUEUED_TURN_TIMEOUT is skipped (its admission given back); one running past the
    hard time limit and the store's retry time whose worker holds no lease is ended as
    failed through the engine (its reservation and slot given back). Returns how many."""
    now = timezone.now()
    ended = 0
    stale = TitleCall.objects.filter(
        status=Status.QUEUED,
        created_at__lt=now - timedelta(seconds=settings.BYOK_QUEUED_TURN_TIMEOUT),
    ).select_related("owner")
    for title_call in stale:
        if _skip(title_call.pk, Status.QUEUED):
            admission.release(owner=title_call.owner, call_id=title_call.pk)
            ended += 1
    hung_before = now - timedelta(
        seconds=settings.BYOK_TURN_HARD_LIMIT + settings.BYOK_TURN_STORE_RETRY_SECONDS + 30
    )
    running = _title_calls().filter(status=Status.RUNNING, started_at__lt=hung_before)
    for title_call in running:
        if engine.lease_held(title_call.pk):
            continue
        try:
            ended += _end_lost(title_call)
        except Exception:  # one call that cannot be ended must not stop the others
            logger.exception("the reaper could not end title call %s", title_call.pk)
    return ended


def _end_lost(title_call: TitleCall) -> bool:
    call = title_engine_call(title_call)
    sink = TitleWriting(title_call.pk, title_call=title_call, open_status=Status.RUNNING)
    if call is None:
        return _skip(title_call.pk, Status.RUNNING)
    outcome = Outcome(status=engine.ERROR, error_kind="worker_lost")
    return engine.close(call, sink, outcome)
