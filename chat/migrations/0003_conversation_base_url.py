"""Conversations remember the server (canonical base URL) they were started against."""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def base_url_from_key(apps, schema_editor):
    """Existing conversations keep the server of the key they were started with."""
    Conversation = apps.get_model("chat", "Conversation")
    ProviderKey = apps.get_model("keys", "ProviderKey")
    Conversation.objects.filter(provider_key__isnull=False).update(
        base_url=Subquery(
            ProviderKey.objects.filter(pk=OuterRef("provider_key_id")).values("base_url")[:1]
        )
    )


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0002_message_tokens_estimated"),
        ("keys", "0003_datakey_to_vault"),
    ]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="base_url",
            field=models.CharField(blank=True, max_length=500, verbose_name="base URL"),
        ),
        migrations.RunPython(base_url_from_key, migrations.RunPython.noop),
    ]
