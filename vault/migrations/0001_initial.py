"""DataKey, moved here from the keys app: the table keys_datakey becomes vault_datakey.

On a new database keys/0001 creates the table and this migration adopts and renames it; on
an existing one the rows stay where they are. The content type moves with the model, so
permissions and admin history that name it keep working.
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="keys", model="datakey").update(app_label="vault")


def move_content_type_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="vault", model="datakey").update(app_label="keys")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("keys", "0003_datakey_to_vault"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="DataKey",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("wrapped", models.BinaryField()),
                        (
                            "kek_id",
                            models.CharField(
                                db_index=True, max_length=64, verbose_name="master key id"
                            ),
                        ),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("rotated_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "owner",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="data_key",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={"db_table": "keys_datakey"},
                )
            ],
            database_operations=[],
        ),
        migrations.AlterModelTable(name="datakey", table=None),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
