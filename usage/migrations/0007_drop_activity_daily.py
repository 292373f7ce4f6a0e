"""ActivityDaily goes: active users are an indexed count of UserActivity
(ops.selectors.dashboard). Its content type and permissions go with it."""

from django.db import migrations


def drop_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="usage", model="activitydaily").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0006_event_tokens_estimated"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.DeleteModel(name="ActivityDaily"),
        migrations.RunPython(drop_content_type, migrations.RunPython.noop),
    ]
