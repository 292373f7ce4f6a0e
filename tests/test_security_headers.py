"""Headers: a Content Security Policy without inline script, and production hardening."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.urls import reverse

from tests.test_settings import PRODUCTION, run_django

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


def test_every_page_carries_a_strict_policy(alice_client):
    for url in ("/", reverse("accounts:settings"), reverse("keys:list"), reverse("chat:home")):
        response = alice_client.get(url)
        directives = policy(response)
        assert directives["default-src"] == ["'self'"], url
        assert "'unsafe-inline'" not in directives["script-src"], url
        assert "'unsafe-eval'" not in directives["script-src"], url
        assert "'unsafe-inline'" not in directives["style-src"], url
        assert directives["frame-ancestors"] == ["'none'"]
        assert directives["object-src"] == ["'none'"]
        assert response["X-Frame-Options"] == "DENY"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Content-Type-Options"] == "nosniff"


def test_no_template_has_inline_script_style_or_event_handlers():
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or "application/json" in tag, f"inline script in {path}"
        assert "<style" not in text, f"inline <style> in {path}"
        assert not re.search(r"\sstyle=", text), f"style attribute in {path}"
        assert not re.search(r"\son[a-z]+=", text), f"inline event handler in {path}"
        assert "hx-on" not in text, f"hx-on (eval) in {path}"
        assert not re.search(r"(src|href)=\"https?://", text), f"outside resource in {path}"


def test_htmx_is_told_not_to_inject_its_indicator_style(client):
    html = client.get("/").content.decode()
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']+)'>", html)
    assert meta and json.loads(meta.group(1))["includeIndicatorStyles"] is False


def test_production_turns_on_secure_cookies_and_hsts():
    code = (
        "from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.SECURE_HSTS_SECONDS, "
        "s.X_FRAME_OPTIONS, s.SECURE_REFERRER_POLICY, s.SECURE_SSL_REDIRECT)"
    )
    result = run_django(PRODUCTION, "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == [
        "True",
        "True",
        "True",
        "31536000",
        "DENY",
        "same-origin",
        "True",
    ]
