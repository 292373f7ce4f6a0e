"""Settings for the test suite: the production settings module with test-only secrets.

The environment still wins (CI sets DATABASE_URL and REDIS_URL); what is filled in here is
only what a newcomer's shell does not have. REDIS_URL may stay empty: the session fixture in
tests/conftest.py then starts the bundled Redis and fills it in.
"""

import os

os.environ.setdefault("BYOK_TESTING", "1")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-key-9f2c1e8b7a6d5c4b3a29181716151413121110ff")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("DJANGO_HTTPS", "0")
# Two fixed test master keys (never used anywhere else): "t2" encrypts, "t1" still decrypts.
os.environ.setdefault(
    "BYOK_MASTER_KEYS",
    "t2:dGVzdC1tYXN0ZXIta2V5LXR3by0wMDAwMDAwMDAwMDA=,"
    "t1:dGVzdC1tYXN0ZXIta2V5LW9uZS0wMDAwMDAwMDAwMDA=",
)
# The fake provider listens on 127.0.0.1.
os.environ.setdefault("BYOK_ALLOW_PRIVATE_ENDPOINTS", "1")

from byok_site.settings import *  # noqa: F403
from byok_site.settings import DATABASES

# Argon2 is deliberately slow; tests create many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STATIC_ROOT = None  # static files come from the finders; nothing is collected in tests
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if DATABASES["default"]["ENGINE"] == "core.sqlite":
    # A file, not :memory:, so the live server thread, Celery worker threads and the
    # test share one database the way the real processes do.
    (BASE_DIR / "var").mkdir(exist_ok=True)  # noqa: F405
    # One file per test process, so runs side by side (two checkouts, CI) never share one.
    DATABASES["default"]["TEST"] = {
        "NAME": str(BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3")  # noqa: F405
    }
