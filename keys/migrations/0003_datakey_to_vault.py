"""DataKey moves to the vault app (vault/migrations/0001 takes over its table)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("keys", "0002_demo_preset")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="DataKey")],
            database_operations=[],
        )
    ]
