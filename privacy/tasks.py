from __future__ import annotations

from celery import shared_task

from privacy import exports


@shared_task(soft_time_limit=600, time_limit=660, ignore_result=True)
def build_account_export(export_id: str) -> None:
    """Build one queued export. Takes the export's id only; safe to deliver twice."""
    exports.account_export_build(export_id=export_id)


@shared_task(soft_time_limit=300, time_limit=330, ignore_result=True)
def expire_account_exports() -> None:
    """Beat job: wipe exports past their expiry."""
    exports.account_exports_expire()


# The names these tasks had before privacy/ existed (accounts.tasks): an export queued by a
# release before it still gets built. Remove once no such message can be waiting.
@shared_task(
    name="accounts.tasks.build_account_export",
    soft_time_limit=600,
    time_limit=660,
    ignore_result=True,
)
def build_account_export_under_its_old_name(export_id: str) -> None:
    exports.account_export_build(export_id=export_id)
