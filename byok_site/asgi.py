"""The ASGI application (`uvicorn byok_site.asgi:application`): the project's handler
(`core.asgi`, which streams SSE bodies outside Django's request context), warmed up as it
loads (`byok_site.warmup.web`)."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "byok_site.settings")
django.setup(set_prefix=False)

from byok_site import warmup  # noqa: E402 - needs the apps loaded
from core.asgi import ASGIHandler  # noqa: E402
from core.warmup import quietly  # noqa: E402

application = ASGIHandler()
quietly(warmup.web)
