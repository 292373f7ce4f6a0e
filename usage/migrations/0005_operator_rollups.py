"""The operator dashboard's rollups, moved here from the ops app: each table ops_<name>
becomes usage_<name>, rows and constraints kept; the content types move with the models."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MODELS = ("activitydaily", "errordaily", "latencydaily", "providerdaily", "useractivity")


def move_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="ops", model__in=MODELS).update(app_label="usage")


def move_content_types_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="usage", model__in=MODELS).update(app_label="ops")


def _id():
    return models.BigAutoField(
        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
    )


class Migration(migrations.Migration):
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("usage", "0004_fewer_write_indexes"),
        ("ops", "0005_rollups_to_usage"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="UserActivity",
                    fields=[
                        (
                            "user",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="+",
                                serialize=False,
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        ("last_turn_on", models.DateField(db_index=True)),
                    ],
                    options={
                        "verbose_name_plural": "user activity",
                        "db_table": "ops_useractivity",
                    },
                ),
                migrations.CreateModel(
                    name="ErrorDaily",
                    fields=[
                        ("id", _id()),
                        ("day", models.DateField()),
                        ("preset", models.CharField(max_length=32, verbose_name="provider")),
                        ("error_kind", models.CharField(max_length=32)),
                        ("count", models.PositiveBigIntegerField(default=0)),
                    ],
                    options={
                        "verbose_name": "error day",
                        "db_table": "ops_errordaily",
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("day", "preset", "error_kind"),
                                name="ops_error_daily_unique",
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="LatencyDaily",
                    fields=[
                        ("id", _id()),
                        ("day", models.DateField()),
                        ("preset", models.CharField(max_length=32, verbose_name="provider")),
                        (
                            "metric",
                            models.CharField(
                                choices=[("ttft", "Time to first token"), ("total", "Total time")],
                                max_length=8,
                            ),
                        ),
                        ("bucket", models.PositiveSmallIntegerField()),
                        ("count", models.PositiveBigIntegerField(default=0)),
                    ],
                    options={
                        "verbose_name": "latency day",
                        "db_table": "ops_latencydaily",
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("day", "preset", "metric", "bucket"),
                                name="ops_latency_daily_unique",
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="ProviderDaily",
                    fields=[
                        ("id", _id()),
                        ("day", models.DateField()),
                        ("preset", models.CharField(max_length=32, verbose_name="provider")),
                        ("turns", models.PositiveBigIntegerField(default=0)),
                        ("errors", models.PositiveBigIntegerField(default=0)),
                        ("input_tokens", models.PositiveBigIntegerField(default=0)),
                        ("output_tokens", models.PositiveBigIntegerField(default=0)),
                        ("cached_tokens", models.PositiveBigIntegerField(default=0)),
                        ("cost_micro", models.PositiveBigIntegerField(default=0)),
                        ("unpriced_turns", models.PositiveBigIntegerField(default=0)),
                    ],
                    options={
                        "verbose_name": "provider day",
                        "db_table": "ops_providerdaily",
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("day", "preset"), name="ops_provider_daily_unique"
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="ActivityDaily",
                    fields=[
                        ("id", _id()),
                        ("day", models.DateField(unique=True)),
                        ("users", models.BigIntegerField(default=0)),
                    ],
                    options={
                        "verbose_name_plural": "activity days",
                        "db_table": "ops_activitydaily",
                    },
                ),
            ],
            database_operations=[],
        ),
        *(migrations.AlterModelTable(name=name, table=None) for name in MODELS),
        migrations.RunPython(move_content_types, move_content_types_back),
    ]
