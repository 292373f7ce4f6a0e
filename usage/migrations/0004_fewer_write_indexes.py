"""Drop the indexes on `owner` alone (and on owner + day) of the usage tables.

Each table already has an index that starts with the owner (its unique constraint, or
(owner, day)), so these only cost every recorded turn. The foreign keys stay as they are:
only the indexes go, so a large table is not re-checked row by row.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import Index

TABLES = ("UsageEvent", "UsageDaily", "UsageConversationDaily")


def drop_owner_indexes(apps, schema_editor):
    for name in TABLES:
        model = apps.get_model("usage", name)
        column = model._meta.get_field("owner").column
        # What AlterField(db_index=False) would drop, found the way it finds them.
        for index_name in schema_editor._constraint_names(
            model, [column], index=True, type_=Index.suffix
        ):
            schema_editor.execute(schema_editor._delete_index_sql(model, index_name))


def create_owner_indexes(apps, schema_editor):
    for name in TABLES:
        model = apps.get_model("usage", name)
        field = model._meta.get_field("owner")
        schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))


def owner_field():
    return models.ForeignKey(
        db_index=False,
        on_delete=django.db.models.deletion.CASCADE,
        related_name="+",
        to=settings.AUTH_USER_MODEL,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0003_rollup_stamp"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="usageconversationdaily",
            name="usage_usage_owner_i_8e39f6_idx",
        ),
        migrations.RemoveIndex(
            model_name="usagedaily",
            name="usage_usage_owner_i_811f2a_idx",
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name=model_name.lower(), name="owner", field=owner_field()
                )
                for model_name in TABLES
            ],
            database_operations=[
                migrations.RunPython(drop_owner_indexes, create_owner_indexes),
            ],
        ),
    ]
