"""The production settings refuse unsafe configuration and pass `check --deploy`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRONG_KEY = "k3Jr9-QwZx81_pLm2NvB7cYt4HsD6fGa0eUiOoP5yT_RwEqAzSxDcFvGbHnJmK"

PRODUCTION = {
    "DJANGO_SECRET_KEY": STRONG_KEY,
    "DJANGO_ALLOWED_HOSTS": "byok.example.com",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "sqlite:////tmp/byok-check-deploy.sqlite3",
    "BYOK_MASTER_KEYS": "k1:" + base64.b64encode(b"m" * 32).decode(),
}


def run_django(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "BYOK_", "REDIS_URL", "DATABASE_URL"))
    }
    env["DJANGO_SETTINGS_MODULE"] = "byok_site.settings"
    env.update(env_overrides)
    command = args or ("check",)
    return subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY is not set"),
        ({"DJANGO_SECRET_KEY": "short"}, "too weak"),
        ({"DJANGO_SECRET_KEY": "a" * 60}, "too weak"),
        ({"DJANGO_SECRET_KEY": "django-insecure-" + STRONG_KEY}, "placeholder"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ALLOWED_HOSTS is not set"),
        ({"REDIS_URL": ""}, "REDIS_URL is not set"),
        ({"BYOK_MASTER_KEYS": ""}, "BYOK_MASTER_KEYS is not set"),
        ({"BYOK_MASTER_KEYS": "k1:c2hvcnQ="}, "BYOK_MASTER_KEYS is malformed"),
        ({"BYOK_MASTER_KEYS": "", "BYOK_MASTER_KEYS_FILE": "/nonexistent"}, "cannot be read"),
    ],
)
def test_production_refuses_to_start_with(overrides, message):
    result = run_django({**PRODUCTION, **overrides})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_debug_is_off_unless_asked_for():
    result = run_django(
        PRODUCTION, "shell", "-c", "from django.conf import settings; print(settings.DEBUG)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_check_deploy_reports_nothing_for_a_production_environment():
    result = run_django(PRODUCTION, "check", "--deploy", "--fail-level", "DEBUG")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_master_keys_can_come_from_a_file(tmp_path):
    keyfile = tmp_path / "master-keys"
    keyfile.write_text(PRODUCTION["BYOK_MASTER_KEYS"] + "\n")
    result = run_django(
        {**PRODUCTION, "BYOK_MASTER_KEYS": "", "BYOK_MASTER_KEYS_FILE": str(keyfile)},
        "shell",
        "-c",
        "from django.conf import settings; print(settings.BYOK_MASTER_KEYS[:3])",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "k1:"


def test_development_starts_without_any_secret():
    result = run_django({"DJANGO_DEBUG": "1"}, "check")
    assert result.returncode == 0, result.stderr


def test_every_variable_the_settings_read_is_documented_in_env_example():
    import re

    settings_source = (ROOT / "byok_site" / "settings.py").read_text()
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', settings_source))
    read |= set(re.findall(r'env\.db_url\(\s*"([A-Z_]+)"', settings_source))
    documented = set(
        re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
    )
    internal = {"BYOK_TESTING"}  # set by the test settings only
    assert read - internal - documented == set()


def test_the_unix_socket_redis_url_becomes_a_kombu_socket_url():
    from byok_site.settings import celery_broker_url

    assert (
        celery_broker_url("unix:///tmp/r.sock?db=3") == "redis+socket:///tmp/r.sock?virtual_host=3"
    )
    assert celery_broker_url("redis://h:6379/2") == "redis://h:6379/2"
