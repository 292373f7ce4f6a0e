"""Writes of the operator side: the operator audit trail."""

from __future__ import annotations

from django.http import HttpRequest

from accounts.models import AuditEvent, User
from accounts.services import audit_request


def operator_audit(
    request: HttpRequest,
    *,
    owner: User,
    action: str,
    target_id: str = "",
    target_label: str = "",
    details: dict[str, object] | None = None,
) -> AuditEvent:
    """Record an operator's action in `owner`'s security log: actor, target, what, IP, when.

    SECURITY: `details` carries metadata only (field names, counts), never a secret.
    """
    return audit_request(
        request,
        owner=owner,
        actor=request.user,  # type: ignore[arg-type]
        action=action,
        target_id=target_id,
        target_label=target_label,
        details=details,
    )
