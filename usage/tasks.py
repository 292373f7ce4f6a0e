from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from keys.models import ProviderKey
from usage.models import NO_KEY, MonthlySpend, SpendCap
from usage.notifications import notify_once_a_day
from usage.services import format_usd, month_start, next_month_start


@shared_task(ignore_result=True)
def send_cap_warning(cap_id: int) -> None:
    """E-mail the owner that a cap is 80% used (sent once per cap and month)."""
    cap = SpendCap.objects.select_related("owner").filter(pk=cap_id).first()
    if cap is None:
        return
    month = month_start(timezone.localdate())
    ledger = MonthlySpend.objects.filter(owner=cap.owner, key_id=cap.key_id, month=month).first()
    spent = ledger.spent_micro if ledger else 0
    scope = "your monthly spend cap"
    if cap.key_id != NO_KEY:
        key = ProviderKey.objects.filter(pk=cap.key_id, owner=cap.owner).first()
        scope = f"the monthly cap of your key “{key.label if key else 'deleted key'}”"
    notify_once_a_day(
        user=cap.owner,
        event=f"cap-80:{cap.pk}:{month:%Y-%m}",
        subject="You have used 80% of a spend cap",
        body=(
            f"You have spent {format_usd(spent)} of {scope} ({format_usd(cap.limit_micro)}) "
            f"this month. At 100% new messages are refused until "
            f"{next_month_start(month):%-d %B}.\n\nSee or change your caps on the Usage page."
        ),
    )


@shared_task(ignore_result=True)
def notify_key_problems() -> None:
    """Beat job: tell owners about keys that became invalid or ran out of credit."""
    since = timezone.now() - timedelta(hours=2)
    problems = ProviderKey.objects.select_related("owner").filter(
        status__in=[ProviderKey.Status.INVALID, ProviderKey.Status.NO_CREDIT],
        updated_at__gte=since,
    )
    for key in problems:
        what = (
            "was rejected by"
            if key.status == ProviderKey.Status.INVALID
            else "has no credit left at"
        )
        notify_once_a_day(
            user=key.owner,
            event=f"key-{key.status}:{key.pk}",
            subject=f"Your key “{key.label}” {what} {key.preset_name}",
            body=(
                f"Your {key.preset_name} key “{key.label}” ({key.fingerprint}) {what} the "
                f"provider. {key.status_reason}\n\nOpen the Keys page to check or replace it."
            ),
        )
