from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from functools import partial
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthenticatedRequest
from chat import selectors, services
from chat.branches import is_continuation
from chat.forms import (
    ConversationSettingsForm,
    MessageForm,
    RenameForm,
    StartForm,
    VersionForm,
)
from chat.models import Conversation, Message
from chat.selectors import SIDEBAR_LIMIT
from chat.services import ChatError
from chat.sse import EventStreamResponse
from core import streams as live
from keys.models import ProviderKey
from keys.services import provider_key_cached_models
from providers.catalog import PRESETS
from usage.selectors import cap_statuses
from vault.models import DataKey
from vault.services import OwnerCipher, owner_cipher_from


def _conversation_for(request: AuthenticatedRequest, conversation_id: object) -> Conversation:
    return get_object_or_404(
        Conversation.objects.for_owner(request.user).select_related("owner"), pk=conversation_id
    )


def _reply_for(request: AuthenticatedRequest, message_id: object) -> Message:
    return get_object_or_404(
        Message.objects.for_owner(request.user).select_related("conversation"),
        pk=message_id,
        role=Message.Role.ASSISTANT,
    )


def _sidebar(request: AuthenticatedRequest) -> dict[str, object]:
    """The sidebar's context: the conversations in groups (pinned, then by date), or, with
    `?q=`, the search results (the page without JavaScript; htmx asks `chat:search`)."""
    query = request.GET.get("q", "")
    archived = request.GET.get("archived") == "1"
    show_all = request.GET.get("all") == "1"
    results = selectors.conversation_search(owner=request.user, query=query)
    sidebar = None
    if results is None:
        sidebar = selectors.conversation_groups(
            owner=request.user, archived=archived, limit=None if show_all else SIDEBAR_LIMIT
        )
    return {
        "groups": sidebar.groups if sidebar else [],
        "hidden": sidebar.hidden if sidebar else 0,
        "results": results,
        "query": results.query if results is not None else "",
        "show_archived": archived,
        # Where the sidebar's forms come back to: this page, without the search.
        "here": request.path + ("?archived=1" if archived else ""),
    }


def _composer_error(
    request: AuthenticatedRequest, error: str, page: Callable[..., HttpResponse]
) -> HttpResponse:
    """A refused message, said next to the composer with the text kept: htmx puts the error
    beside the box (the box keeps its text); without htmx, `page` renders the page again
    with the text in the box and the error under it (422)."""
    if request.headers.get("HX-Request"):
        return _error_beside(request, error, "#composer-error")
    return page(draft=request.POST.get("text", ""), error=error, status=422)


def _error_beside(request: AuthenticatedRequest, error: str, target: str) -> HttpResponse:
    """htmx: `error` put into the element `target` (422), in place of the swap asked for."""
    response = render(request, "chat/_send_error.html", {"error": error}, status=422)
    response["HX-Retarget"] = target
    response["HX-Reswap"] = "innerHTML"
    return response


def _picked_key(request: AuthenticatedRequest, key_id: uuid.UUID | None) -> ProviderKey | None:
    """SECURITY: the composer's key, only among the owner's (another user's id: None)."""
    if key_id is None:
        return None
    return ProviderKey.objects.for_owner(request.user).filter(pk=key_id).first()


def _back_to(request: AuthenticatedRequest, default: str) -> HttpResponse:
    """Redirect to the form's `next` (a path on this site: the page the sidebar is on), else
    to `default`. Back from the sidebar, the list is open again (#conversations: on a phone
    it is a drawer)."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target.partition("#")[0] + "#conversations")
    return redirect(default)


@login_required
@require_http_methods(["GET", "POST"])
def chat_home(request: AuthenticatedRequest) -> HttpResponse:
    """A new chat: the composer, ready to type, with the key and model picker. The
    conversation is created by the first message (`services.conversation_start`)."""
    if request.method == "POST":
        form = StartForm(request.POST)
        if not form.is_valid():
            return _composer_error(request, "Type a message first.", partial(_home_page, request))
        data = form.cleaned_data
        key = _picked_key(request, data["key"])
        try:
            if key is None:
                raise ChatError("Pick one of your keys.", field="key")
            _, reply = services.conversation_start(
                owner=request.user,
                key=key,
                model=data["model"],
                text=data["text"],
                system_prompt=data["system_prompt"],
                temporary=data["temporary"],
            )
        except ChatError as error:
            return _composer_error(request, error.message, partial(_home_page, request))
        url = reverse("chat:conversation", args=[reply.conversation_id])
        if request.headers.get("HX-Request"):
            response = HttpResponse(status=204)
            response["HX-Redirect"] = url
            return response
        return redirect(url)
    return _home_page(request)


def _home_page(
    request: AuthenticatedRequest, *, draft: str = "", error: str = "", status: int = 200
) -> HttpResponse:
    picker = selectors.model_picker(owner=request.user)
    context = {
        "picker": picker,
        "has_keys": bool(picker.options),
        "max_chars": settings.BYOK_MAX_MESSAGE_CHARS,
        "caps": cap_statuses(owner=request.user, key_id=picker.key.pk if picker.key else None),
        "draft": draft,
        "composer_error": error,
        **_sidebar(request),
    }
    return render(request, "chat/home.html", context, status=status)


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value or "")
    except ValueError:
        return None


@login_required
@require_GET
def model_options(request: AuthenticatedRequest) -> HttpResponse:
    """htmx: model suggestions for the chosen key: the preset's popular models plus the
    models the key listed the last time it was checked (cached, no key needed here)."""
    key_id = _uuid_or_none(request.GET.get("key"))
    key = ProviderKey.objects.for_owner(request.user).filter(pk=key_id).first() if key_id else None
    models: list[str] = []
    if key is not None:
        preset = PRESETS.get(key.preset)
        models = list(preset.popular_models) if preset else []
        for model in provider_key_cached_models(key):
            if model not in models:
                models.append(model)
    return render(request, "chat/_model_options.html", {"models": models})


@login_required
@require_GET
def conversation_detail(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    return _conversation_page(request, _conversation_for(request, conversation_id))


def _conversation_page(
    request: AuthenticatedRequest,
    conversation: Conversation,
    *,
    draft: str = "",
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    cipher = OwnerCipher(request.user)
    context = {
        "draft": draft,
        "composer_error": error,
        "conversation": conversation,
        "title": selectors.conversation_title(conversation, cipher),
        "system_prompt": selectors.conversation_system_prompt(conversation, cipher),
        "items": selectors.conversation_branch(conversation, cipher),
        "picker": selectors.model_picker(owner=request.user, conversation=conversation),
        "max_chars": settings.BYOK_MAX_MESSAGE_CHARS,
        # The caps this conversation's turns are held to, for the 80 % and 100 % banners.
        "caps": cap_statuses(owner=request.user, key_id=conversation.provider_key_id),
        **_sidebar(request),
    }
    return render(request, "chat/conversation.html", context, status=status)


@login_required
@require_POST
def message_send(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    conversation = _conversation_for(request, conversation_id)
    form = MessageForm(request.POST)
    error = None
    if form.is_valid():
        cipher = OwnerCipher(request.user)
        data = form.cleaned_data
        try:
            key = _picked_key(request, data["key"])
            if data["key"] is not None and key is None:
                raise ChatError("Pick one of your keys.", field="key")
            user_message, reply = services.message_send(
                conversation=conversation,
                text=data["text"],
                cipher=cipher,
                key=key,
                model=data["model"] or None,
            )
        except ChatError as failure:
            error = failure.message
        else:
            if request.headers.get("HX-Request"):
                conversation = reply.conversation  # the title is set by the first send
                items = [
                    selectors.message_view(user_message, cipher),
                    selectors.message_view(reply, cipher),
                ]
                context = {
                    "items": items,
                    "conversation": conversation,
                    "title": selectors.conversation_title(conversation, cipher),
                }
                return render(request, "chat/_messages.html", context)
            return redirect("chat:conversation", conversation_id=conversation.pk)
    else:
        error = "Type a message first."
    return _composer_error(request, error, partial(_conversation_page, request, conversation))


@login_required
@require_GET
def reply_markdown(request: AuthenticatedRequest, message_id: object) -> HttpResponse:
    """A reply's text as its Markdown source (the page's Copy), opened for its owner only."""
    reply = _reply_for(request, message_id)
    text = selectors.message_view(reply, OwnerCipher(request.user)).text
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def turn_cancel(request: AuthenticatedRequest, message_id: object) -> HttpResponse:
    reply = _reply_for(request, message_id)
    services.turn_cancel(message=reply)
    if request.headers.get("HX-Request"):
        return HttpResponse(status=204)
    return redirect("chat:conversation", conversation_id=reply.conversation_id)


@login_required
@require_POST
def turn_regenerate(request: AuthenticatedRequest, message_id: object) -> HttpResponse:
    reply = _reply_for(request, message_id)
    try:
        services.turn_regenerate(message=reply)
    except ChatError as error:
        return _branch_error(request, reply.conversation_id, error.message)
    return _branch_changed(request, reply.conversation_id)


@login_required
@require_POST
def turn_continue(request: AuthenticatedRequest, message_id: object) -> HttpResponse:
    """Continue a reply that was stopped or cut off (htmx: the branch, with the reply
    growing; without JS: back to the page, which follows it)."""
    reply = _reply_for(request, message_id)
    try:
        services.turn_continue(message=reply, cipher=OwnerCipher(request.user))
    except ChatError as error:
        return _branch_error(request, reply.conversation_id, error.message)
    return _branch_changed(request, reply.conversation_id)


# --- branches: edit, versions ---------------------------------------------------------------


def _message_in(conversation: Conversation, message_id: object) -> Message:
    """SECURITY: one of this conversation's own messages (the conversation is the owner's)."""
    return get_object_or_404(conversation.messages.all(), pk=message_id)


def _branch_changed(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    """htmx: the active branch, to replace the page's messages; otherwise back to the page."""
    if not request.headers.get("HX-Request"):
        return redirect("chat:conversation", conversation_id=conversation_id)
    conversation = _conversation_for(request, conversation_id)
    cipher = OwnerCipher(request.user)
    items = selectors.conversation_branch(conversation, cipher)
    return render(request, "chat/_messages.html", {"items": items, "conversation": conversation})


def _branch_error(
    request: AuthenticatedRequest, conversation_id: object, error: str, *, target: str = ""
) -> HttpResponse:
    if request.headers.get("HX-Request"):
        return _error_beside(request, error, target or "#composer-error")
    messages.error(request, error)
    return redirect("chat:conversation", conversation_id=conversation_id)


@login_required
@require_POST
def message_edit(
    request: AuthenticatedRequest, conversation_id: object, message_id: object
) -> HttpResponse:
    conversation = _conversation_for(request, conversation_id)
    message = _message_in(conversation, message_id)
    form = MessageForm(request.POST)
    try:
        if not form.is_valid():
            raise ChatError("Type a message first.")
        services.message_edit(
            conversation=conversation,
            message=message,
            text=form.cleaned_data["text"],
            cipher=OwnerCipher(request.user),
        )
    except ChatError as error:
        # A user message's edit form has its own error line; anything else has none.
        target = f"#edit-error-{message.pk}" if message.role == Message.Role.USER else ""
        return _branch_error(request, conversation.pk, error.message, target=target)
    return _branch_changed(request, conversation.pk)


@login_required
@require_POST
def branch_switch(
    request: AuthenticatedRequest, conversation_id: object, message_id: object
) -> HttpResponse:
    conversation = _conversation_for(request, conversation_id)
    message = _message_in(conversation, message_id)
    form = VersionForm(request.POST)
    try:
        if not form.is_valid():
            raise ChatError("Pick a version by its number.")
        services.branch_switch(
            conversation=conversation, message=message, version=form.cleaned_data["version"]
        )
    except ChatError as error:
        return _branch_error(request, conversation.pk, error.message)
    return _branch_changed(request, conversation.pk)


@login_required
@require_POST
def conversation_rename(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    conversation = _conversation_for(request, conversation_id)
    form = RenameForm(request.POST)
    try:
        if not form.is_valid():
            raise ChatError("Give the conversation a title (up to 200 characters).")
        services.conversation_rename(conversation=conversation, title=form.cleaned_data["title"])
    except ChatError as error:
        messages.error(request, error.message)
    return _back_to(request, reverse("chat:conversation", args=[conversation.pk]))


@login_required
@require_POST
def conversation_archive(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    conversation = _conversation_for(request, conversation_id)
    services.conversation_set_flags(conversation=conversation, archived=not conversation.archived)
    messages.success(
        request, "Conversation archived." if conversation.archived else "Conversation restored."
    )
    return _back_to(request, reverse("chat:conversation", args=[conversation.pk]))


@login_required
@require_POST
def conversation_pin(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    """Pin (`pinned=1`) or unpin (`pinned=0`) a conversation in the sidebar."""
    conversation = _conversation_for(request, conversation_id)
    services.conversation_pin(conversation=conversation, pinned=request.POST.get("pinned") == "1")
    return _back_to(request, reverse("chat:conversation", args=[conversation.pk]))


@login_required
@require_GET
def conversation_search(request: AuthenticatedRequest) -> HttpResponse:
    """htmx: the sidebar's list for `?q=` as the user types: the search results, or the
    conversations in their groups for an empty query."""
    context = _sidebar(request)
    # The page the list is shown on (htmx names it): its forms come back there.
    page = urlsplit(request.headers.get("HX-Current-URL", ""))
    context["here"] = ""
    if page.path and url_has_allowed_host_and_scheme(
        request.headers["HX-Current-URL"],
        allowed_hosts={request.get_host()},
        require_https=request.is_secure(),
    ):
        context["here"] = page.path + ("?archived=1" if "archived=1" in page.query else "")
        with contextlib.suppress(Resolver404):
            match = resolve(page.path)
            if match.view_name == "chat:conversation":
                context["current_id"] = match.kwargs["conversation_id"]
    return render(request, "chat/_sidebar_list.html", context)


@login_required
@require_POST
def conversation_temporary(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    conversation = _conversation_for(request, conversation_id)
    services.conversation_set_flags(conversation=conversation, temporary=not conversation.temporary)
    return redirect("chat:conversation", conversation_id=conversation.pk)


@login_required
@require_http_methods(["GET", "POST"])
def conversation_settings(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    """The conversation's settings: system prompt, temperature, reply length, and the
    reasoning effort where its model has one. Bad input re-renders with the errors (422)."""
    conversation = _conversation_for(request, conversation_id)
    cipher = OwnerCipher(request.user)
    initial = {
        "system_prompt": selectors.conversation_system_prompt(conversation, cipher),
        "temperature": conversation.temperature,
        "max_output_tokens": conversation.max_output_tokens,
        "reasoning_effort": conversation.reasoning_effort,
    }
    form = ConversationSettingsForm(
        request.POST or None,
        initial=initial,
        default_max_output_tokens=settings.BYOK_MAX_OUTPUT_TOKENS,
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.conversation_settings_update(conversation=conversation, **form.cleaned_data)
        except ChatError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            messages.success(request, "Settings saved. They apply from the next reply.")
            return redirect("chat:conversation", conversation_id=conversation.pk)
    context = {
        "conversation": conversation,
        "title": selectors.conversation_title(conversation, cipher),
        "form": form,
        "options": services.conversation_model_options(conversation),
    }
    return render(request, "chat/settings.html", context, status=422 if form.is_bound else 200)


@login_required
@require_http_methods(["GET", "POST"])
def conversation_delete(request: AuthenticatedRequest, conversation_id: object) -> HttpResponse:
    conversation = _conversation_for(request, conversation_id)
    if request.method == "POST":
        services.conversation_delete(conversation=conversation)
        messages.success(request, "Conversation deleted.")
        return redirect("chat:home")
    title = selectors.conversation_title(conversation)
    return render(
        request, "chat/confirm_delete.html", {"conversation": conversation, "title": title}
    )


# --- live stream (async) --------------------------------------------------------------------


async def turn_stream(request: HttpRequest, message_id: object) -> HttpResponseBase:
    """Server-sent events of one turn (chat.sse): replays from `Last-Event-ID` (or
    `?after=`), then follows live. Only the checks run here; the body streams detached."""
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    user = await request.auser()
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    message = (
        await Message.objects.for_owner(user)  # type: ignore[misc]
        .filter(pk=message_id, role=Message.Role.ASSISTANT)
        # The owner's data key in the same query: the stream's entries are sealed with it.
        .select_related("owner__data_key", "parent")
        .only(
            "id",
            "status",
            "role",
            "owner__id",
            "owner__data_key__wrapped",
            "owner__data_key__owner",
            "parent__id",
            "parent__role",
            "parent__conversation_id",
        )
        .afirst()
    )
    if message is None:
        raise Http404("No such message.")
    last_id = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0-0"
    if not live.valid_stream_id(last_id):
        last_id = "0-0"
    try:
        data_key: DataKey | None = message.owner.data_key
    except DataKey.DoesNotExist:
        data_key = None
    cipher = owner_cipher_from(data_key)
    prefix = ""
    parent = message.parent
    if cipher is not None and parent is not None and is_continuation(message.role, parent.role):
        prefix = await sync_to_async(selectors.continued_prefix)(message, cipher)
    return EventStreamResponse(
        message.pk, last_id, final=message.is_final, cipher=cipher, prefix=prefix
    )
