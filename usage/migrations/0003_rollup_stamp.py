import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def stamp_owners_with_usage(apps, schema_editor):
    """Owners who already have rollups get a stamp, so their usage page can be cached."""
    UsageDaily = apps.get_model("usage", "UsageDaily")
    RollupStamp = apps.get_model("usage", "RollupStamp")
    owners = UsageDaily.objects.values_list("owner_id", flat=True).order_by().distinct()
    RollupStamp.objects.bulk_create(
        (RollupStamp(owner_id=owner_id, stamp=uuid.uuid4()) for owner_id in owners.iterator()),
        batch_size=2000,
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("usage", "0002_load_prices"),
    ]

    operations = [
        migrations.CreateModel(
            name="RollupStamp",
            fields=[
                (
                    "owner",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                ("stamp", models.UUIDField(default=uuid.uuid4)),
            ],
        ),
        migrations.RunPython(stamp_owners_with_usage, migrations.RunPython.noop),
    ]
