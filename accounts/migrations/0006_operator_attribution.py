"""Security-log events say whether an operator did them (`by_operator`), lastingly.

Existing rows: an `operator.*` action, or an actor other than the owner, was an operator's;
a 2FA removal by an operator becomes `operator.2fa_reset`, so it no longer reads as the
user's own "turned off". Rows the user did themselves stay as they are.
"""

from django.db import migrations, models
from django.db.models import F, Q


def attribute_operator_events(apps, schema_editor):
    AuditEvent = apps.get_model("accounts", "AuditEvent")
    by_someone_else = Q(actor__isnull=False) & ~Q(actor=F("owner"))
    AuditEvent.objects.filter(by_someone_else, action="2fa.disabled").update(
        action="operator.2fa_reset"
    )
    AuditEvent.objects.filter(by_someone_else | Q(action__startswith="operator.")).update(
        by_operator=True
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0005_accountexport_to_privacy"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="by_operator",
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="action",
            field=models.CharField(
                choices=[
                    ("key.created", "Key added"),
                    ("key.replaced", "Key secret replaced"),
                    ("key.renamed", "Key renamed"),
                    ("key.reordered", "Key order changed"),
                    ("key.verified", "Key checked"),
                    ("key.revoked", "Key revoked"),
                    ("key.deleted", "Key deleted"),
                    ("key.expired", "Key expired"),
                    ("key.used", "Key used"),
                    ("login.succeeded", "Logged in"),
                    ("login.failed", "Failed login"),
                    ("login.locked_out", "Locked out after failed attempts"),
                    ("login.logged_out", "Logged out"),
                    ("sudo.confirmed", "Password confirmed"),
                    ("sudo.failed", "Failed password confirmation"),
                    ("2fa.enabled", "Two-factor authentication turned on"),
                    ("2fa.disabled", "Two-factor authentication turned off"),
                    ("2fa.recovery_codes", "New recovery codes created"),
                    ("2fa.recovery_code_used", "Recovery code used"),
                    ("account.password_changed", "Password changed"),
                    ("account.password_reset", "Password reset by email"),
                    ("account.email_changed", "Email address changed"),
                    ("account.session_ended", "Session ended"),
                    ("account.export_requested", "Data export requested"),
                    ("account.export_downloaded", "Data export downloaded"),
                    ("operator.changed", "Account changed by an operator"),
                    ("operator.created", "Account created by an operator"),
                    ("operator.disabled", "Account disabled by an operator"),
                    ("operator.enabled", "Account enabled by an operator"),
                    ("operator.sessions_ended", "All sessions ended by an operator"),
                    ("operator.2fa_reset", "Two-factor authentication was reset by an operator"),
                    (
                        "operator.password_reset_sent",
                        "Password reset link sent to you by an operator",
                    ),
                    ("operator.role_changed", "Operator role changed by an operator"),
                    ("operator.rate_limits", "Rate limits changed by an operator"),
                    ("operator.price_changed", "Model price changed by an operator"),
                ],
                max_length=40,
            ),
        ),
        migrations.RunPython(attribute_operator_events, migrations.RunPython.noop),
    ]
