"""Small partial indexes for the dashboard's few non-rollup counts.

They live on other apps' tables (accounts, keys, chat), created here with plain SQL so those
apps' models stay untouched; both PostgreSQL and SQLite support partial indexes. Each one
covers only the rows the dashboard counts: keys with a problem, turns in flight.
"""

from django.db import migrations

INDEXES = [
    ("ops_user_date_joined", "accounts_user (date_joined)"),
    (
        "ops_key_problem_status",
        "keys_providerkey (status) WHERE status IN ('invalid', 'no_credit')",
    ),
    (
        "ops_message_in_flight",
        "chat_message (status, created_at) WHERE status IN ('queued', 'running')",
    ),
]


class Migration(migrations.Migration):
    dependencies = [
        ("ops", "0002_roles"),
        ("accounts", "0004_operator_actions"),
        ("keys", "0002_demo_preset"),
        ("chat", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            f"CREATE INDEX IF NOT EXISTS {name} ON {target}",
            f"DROP INDEX IF EXISTS {name}",
        )
        for name, target in INDEXES
    ]
