"""AccountExport moves to the privacy app (privacy/migrations/0001 takes over its table)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_operator_actions")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AccountExport")],
            database_operations=[],
        )
    ]
