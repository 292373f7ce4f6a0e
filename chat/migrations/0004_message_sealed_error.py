"""Seal failed replies' error messages (a provider's error often quotes the user's text),
then drop the plaintext column.

Sealing here uses the vault's pure crypto and the historical DataKey rows, so it does not
depend on today's model code. Rows whose owner's data key does not open lose the message and
keep their error kind (the page then says the reply failed). Reversing is lossy: it
restores the column empty and drops the sealed messages.
"""

from __future__ import annotations

from django.conf import settings
from django.db import migrations, models

from vault import crypto


def seal_errors(apps, schema_editor):
    Message = apps.get_model("chat", "Message")
    DataKey = apps.get_model("vault", "DataKey")
    failed = Message.objects.exclude(error_message="").only("id", "owner_id", "error_message")
    if not failed.exists():
        return
    keyring = crypto.parse_keyring(settings.BYOK_MASTER_KEYS)
    deks: dict[object, bytes | None] = {}
    for message in failed.iterator(chunk_size=500):
        owner_id = message.owner_id
        if owner_id not in deks:
            row = DataKey.objects.filter(owner_id=owner_id).first()
            try:
                deks[owner_id] = (
                    crypto.unwrap_dek(keyring, bytes(row.wrapped), user_id=str(owner_id))
                    if row is not None
                    else None
                )
            except crypto.VaultError:
                deks[owner_id] = None
        dek = deks[owner_id]
        sealed = b""
        if dek is not None:
            context = crypto.SealContext(
                purpose="message_error", user_id=str(owner_id), row_id=str(message.pk), extra={}
            )
            sealed = crypto.seal(dek, message.error_message.encode("utf-8"), context)
        Message.objects.filter(pk=message.pk).update(sealed_error=sealed)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0003_conversation_base_url"),
        ("vault", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="sealed_error",
            field=models.BinaryField(default=b"", editable=False),
        ),
        migrations.RunPython(seal_errors, migrations.RunPython.noop, elidable=True),
        migrations.RemoveField(model_name="message", name="error_message"),
    ]
