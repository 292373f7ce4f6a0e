"""The dashboard's rollups move to the usage app (usage/migrations/0005 takes over their
tables): usage writes them with every recorded turn, ops only reads them."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("ops", "0004_activity_daily")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name=name)
                for name in (
                    "ActivityDaily",
                    "ErrorDaily",
                    "LatencyDaily",
                    "ProviderDaily",
                    "UserActivity",
                )
            ],
            database_operations=[],
        )
    ]
