"""docker-compose.yml and the Dockerfile name real services, modules and commands.

Docker does not run on the development machines, so this reads the files instead.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ["web", "worker", "beat", "migrate"]


def test_it_has_the_services():
    assert {"web", "worker", "beat", "postgres", "redis"} <= set(SERVICES)


@pytest.mark.parametrize("name", ["web", "worker", "beat", "postgres", "redis"])
def test_each_long_running_service_has_a_health_check_and_restart_policy(name):
    service = SERVICES[name]
    assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert service.get("restart") in {"unless-stopped", "always", "on-failure"}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_are_configured_from_env_and_use_postgres_and_redis(name):
    service = SERVICES[name]
    assert service["env_file"] == ".env"
    assert service["environment"]["DATABASE_URL"].startswith("postgres://")
    assert service["environment"]["REDIS_URL"].startswith("redis://redis:")


def _check_command(argv: list[str]) -> None:
    program = argv[0]
    if program == "uvicorn":
        module, _, attribute = argv[1].partition(":")
        assert hasattr(importlib.import_module(module), attribute), argv
    elif program == "celery":
        app_package = importlib.import_module(argv[argv.index("-A") + 1])
        assert hasattr(app_package, "celery_app"), argv
        assert argv[argv.index("-A") + 2] in {"worker", "beat", "inspect"}, argv
    elif program == "python" and argv[1] == "manage.py":
        assert argv[2] in get_commands(), f"unknown management command {argv[2]}"
    elif program == "python" and argv[1] == "-c":
        compile(argv[2], "<healthcheck>", "exec")
    else:
        pytest.fail(f"unexpected program {program!r} in {argv}")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_command_names_a_real_module_or_management_command(name):
    service = SERVICES[name]
    _check_command(service["command"])
    test = service.get("healthcheck", {}).get("test")
    if test:
        assert test[0] == "CMD"
        _check_command(test[1:])


def test_the_dockerfile_runs_as_a_non_root_user_on_python_311_slim():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)
    assert re.search(r"^USER byok$", dockerfile, re.MULTILINE)
    assert "collectstatic" in dockerfile
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd
    _check_command(yaml.safe_load(cmd.group(1)))


def test_procfile_dev_runs_web_worker_beat_redis_and_the_demo_provider():
    entries = dict(
        line.split(":", 1)
        for line in (ROOT / "Procfile.dev").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert set(entries) == {"redis", "web", "worker", "beat", "demo"}
    assert "byok_site.demo_provider" in entries["demo"]
    assert "byok_site.asgi:application" in entries["web"]
    assert "--reload" in entries["web"]
    assert "-A byok_site worker" in entries["worker"]
    assert "-A byok_site beat" in entries["beat"]
    assert "core.embedded_redis" in entries["redis"]
