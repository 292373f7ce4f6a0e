"""Asking a model to carry on a reply it did not finish (Continue, in the chat).

Plain Python, like the rest of `providers`: the chat builds the request with it, and the
demo provider (`byok_site.demo_provider`) recognises such a request by it.

Two ways, by what the model takes (`providers.reasoning.takes_prefill`): the reply so far as
the request's last message, which the model continues word for word (a prefill, Anthropic's
models that take one); or the reply so far as its own message, then a user message asking
for the rest (`CONTINUE_INSTRUCTION`), for every other model. The reply so far is sent
without trailing whitespace: Anthropic refuses a prefill that ends in it.
"""

from __future__ import annotations

from providers.types import ChatMessage, Role

CONTINUE_INSTRUCTION = (
    "Continue your previous reply from exactly where it stopped. Do not repeat anything you "
    "already wrote and add no introduction: what you write now is appended to it as it is."
)


def continuation_messages(messages: list[ChatMessage], *, prefill: bool) -> list[ChatMessage]:
    """`messages`, which end with the assistant's unfinished reply, as a request for the
    rest of it: that reply as a prefill, or followed by `CONTINUE_INSTRUCTION`."""
    *before, partial = messages
    if partial.role != Role.ASSISTANT:
        raise ValueError("a continuation ends with the reply it continues")
    partial = ChatMessage(Role.ASSISTANT, partial.content.rstrip())
    if prefill:
        return [*before, partial]
    return [*before, partial, ChatMessage(Role.USER, CONTINUE_INSTRUCTION)]
