"""Account export: a ZIP of conversations (opened), key metadata, usage and the security log.

Built by a worker (privacy.tasks.build_account_export) with progress on the row; stored
sealed under the owner's data key; downloadable once by its owner; wiped after
BYOK_EXPORT_TTL_HOURS. No provider key secret, sealed value or password hash goes in.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import zipfile
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import AuditEvent, User
from accounts.services import audit_request
from chat.models import Conversation
from chat.selectors import conversation_messages, conversation_system_prompt, conversation_title
from keys.models import ProviderKey
from privacy.models import AccountExport
from usage.selectors import usage_csv_rows
from vault.services import OwnerCipher

logger = logging.getLogger(__name__)

ARCHIVE_PURPOSE = "account_export"
Status = AccountExport.Status


class ExportError(Exception):
    """An export cannot be started or downloaded; the message is fit for the user."""


def account_export_request(*, user: User, request: HttpRequest) -> AccountExport:
    """Queue a new export (one at a time per user)."""
    from privacy.tasks import build_account_export

    if (
        AccountExport.objects.for_owner(user)
        .filter(status__in=[Status.QUEUED, Status.RUNNING])
        .exists()
    ):
        raise ExportError("An export is already being prepared.")
    with transaction.atomic():
        export = AccountExport.objects.create(
            owner=user,
            expires_at=timezone.now() + timedelta(hours=settings.BYOK_EXPORT_TTL_HOURS),
        )
        audit_request(
            request,
            owner=user,
            actor=user,
            action=AuditEvent.Action.EXPORT_REQUESTED,
            target_id=str(export.pk),
        )
        export_id = str(export.pk)
        transaction.on_commit(lambda: build_account_export.delay(export_id), robust=True)
    return export


def _csv(rows: Iterable[Iterable[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()


def _key_metadata(owner: User) -> list[dict[str, Any]]:
    fields = [
        "id",
        "preset",
        "label",
        "base_url",
        "fingerprint",
        "status",
        "created_at",
        "last_verified_at",
        "last_used_at",
        "expires_on",
        "revoked_at",
    ]
    return [
        {name: _jsonable(getattr(key, name)) for name in fields}
        for key in ProviderKey.objects.for_owner(owner)
    ]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _security_log_rows(owner: User) -> list[list[Any]]:
    rows: list[list[Any]] = [
        ["time", "event", "target", "details", "ip_address", "user_agent", "count", "by"]
    ]
    for event in AuditEvent.objects.for_owner(owner).order_by("created_at"):
        by = "operator" if event.by_operator else "system" if event.actor_id is None else "you"
        rows.append(
            [
                event.created_at.isoformat(),
                event.get_action_display(),
                event.target_label,
                json.dumps(event.details, sort_keys=True),
                # An operator's address and browser would say who they are: not the owner's.
                "" if event.by_operator else event.ip_address,
                "" if event.by_operator else event.user_agent,
                event.count,
                by,
            ]
        )
    return rows


def _conversations(owner: User, export: AccountExport) -> Iterable[tuple[str, dict[str, Any]]]:
    cipher = OwnerCipher(owner)
    conversations = list(Conversation.objects.for_owner(owner).order_by("created_at"))
    total = max(len(conversations), 1)
    for index, conversation in enumerate(conversations, start=1):
        yield (
            f"conversations/{conversation.pk}.json",
            {
                "id": str(conversation.pk),
                "title": conversation_title(conversation, cipher),
                "system_prompt": conversation_system_prompt(conversation, cipher),
                "provider": conversation.preset,
                "model": conversation.model,
                "created_at": conversation.created_at.isoformat(),
                "archived": conversation.archived,
                # The branch the page shows ends here; every branch's messages are below,
                # each with its parent (null for a first message): the tree rebuilds.
                "active_leaf_id": str(conversation.active_leaf_id)
                if conversation.active_leaf_id
                else None,
                "messages": [
                    {
                        "id": str(view.message.pk),
                        "parent_id": str(view.message.parent_id)
                        if view.message.parent_id
                        else None,
                        "role": view.message.role,
                        "text": view.text,
                        "status": view.message.status,
                        "model": view.message.model,
                        "created_at": view.message.created_at.isoformat(),
                        "input_tokens": view.message.input_tokens,
                        "output_tokens": view.message.output_tokens,
                    }
                    for view in conversation_messages(conversation, cipher)
                ],
            },
        )
        _set_progress(export, 5 + int(80 * index / total))


def _set_progress(export: AccountExport, progress: int) -> None:
    AccountExport.objects.filter(pk=export.pk).update(progress=min(progress, 99))


def account_export_build(*, export_id: str) -> None:
    """Build the archive for one queued export (worker side). Safe to deliver twice."""
    # Unscoped on purpose: the task receives only ids its owner queued.
    claimed = AccountExport.objects.filter(pk=export_id, status=Status.QUEUED).update(
        status=Status.RUNNING, progress=1
    )
    if claimed != 1:
        return
    export = AccountExport.objects.select_related("owner").get(pk=export_id)
    owner = export.owner
    try:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(
                "README.txt",
                f"BYOK export for {owner.email}, made {timezone.now().isoformat()}.\n"
                "conversations/: one JSON file per conversation, text opened.\n"
                "keys.json: key metadata (no secrets). usage.csv: usage. "
                "security_log.csv: your security log.\n",
            )
            archive.writestr(
                "account.json",
                json.dumps(
                    {
                        "email": owner.email,
                        "display_name": owner.display_name,
                        "date_joined": owner.date_joined.isoformat(),
                    },
                    indent=2,
                ),
            )
            for name, document in _conversations(owner, export):
                archive.writestr(name, json.dumps(document, indent=2, ensure_ascii=False))
            archive.writestr("keys.json", json.dumps(_key_metadata(owner), indent=2))
            _set_progress(export, 90)
            archive.writestr("usage.csv", _csv(usage_csv_rows(owner)))
            archive.writestr("security_log.csv", _csv(_security_log_rows(owner)))
        data = buffer.getvalue()
        sealed = OwnerCipher(owner).seal(
            ARCHIVE_PURPOSE, export.pk, base64.b64encode(data).decode("ascii")
        )
    except Exception:
        logger.exception("account export %s failed", export_id)
        AccountExport.objects.filter(pk=export_id).update(
            status=Status.FAILED,
            error_message="The export could not be prepared. Try again later.",
            finished_at=timezone.now(),
        )
        return
    AccountExport.objects.filter(pk=export_id, status=Status.RUNNING).update(
        status=Status.READY,
        progress=100,
        sealed_archive=sealed,
        size_bytes=len(data),
        finished_at=timezone.now(),
    )


def account_export_take(*, export: AccountExport, request: HttpRequest) -> bytes:
    """The archive, once: the row is marked downloaded and wiped before it is returned."""
    if export.status == Status.READY and export.expires_at <= timezone.now():
        account_exports_expire()
        raise ExportError("This export expired. Request a new one.")
    sealed = bytes(export.sealed_archive)
    taken = AccountExport.objects.filter(pk=export.pk, status=Status.READY).update(
        status=Status.DOWNLOADED, sealed_archive=b"", downloaded_at=timezone.now()
    )
    if taken != 1 or not sealed:
        raise ExportError("This export was already downloaded. Request a new one.")
    audit_request(
        request,
        owner=export.owner,
        actor=export.owner,
        action=AuditEvent.Action.EXPORT_DOWNLOADED,
        target_id=str(export.pk),
    )
    text = OwnerCipher(export.owner).open(ARCHIVE_PURPOSE, export.pk, sealed)
    return base64.b64decode(text)


def account_exports_expire() -> int:
    """Wipe archives past their expiry. Returns how many."""
    return AccountExport.objects.filter(
        expires_at__lte=timezone.now(), status__in=[Status.READY, Status.QUEUED, Status.RUNNING]
    ).update(status=Status.EXPIRED, sealed_archive=b"")
