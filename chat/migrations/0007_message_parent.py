"""Messages form a tree (edits and regenerations are siblings), and a conversation remembers
the leaf of the branch it shows.

Existing conversations become one chain: each message's parent is the one before it (by
created_at, then id, the order the page showed), the active leaf is the last message. The
ORM only, so it runs the same on SQLite and PostgreSQL. Reversing drops both columns.
"""

from __future__ import annotations

import itertools

import django.db.models.deletion
from django.db import migrations, models

BATCH = 500


def chain_messages(apps, schema_editor):
    Conversation = apps.get_model("chat", "Conversation")
    Message = apps.get_model("chat", "Message")
    # One conversation at a time: memory stays bounded and no cursor is open while writing.
    for conversation_id in list(Conversation.objects.values_list("id", flat=True)):
        ids = list(
            Message.objects.filter(conversation_id=conversation_id)
            .order_by("created_at", "id")
            .values_list("id", flat=True)
        )
        if not ids:
            continue
        chained = [Message(id=child, parent_id=parent) for parent, child in itertools.pairwise(ids)]
        Message.objects.bulk_update(chained, ["parent"], batch_size=BATCH)
        Conversation.objects.filter(pk=conversation_id).update(active_leaf_id=ids[-1])


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0006_message_in_flight_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="active_leaf",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="chat.message",
            ),
        ),
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="children",
                to="chat.message",
            ),
        ),
        migrations.RunPython(chain_messages, migrations.RunPython.noop, elidable=True),
    ]
