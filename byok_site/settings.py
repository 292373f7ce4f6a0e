"""Django settings for BYOK.

Every value comes from the environment through django-environ; `.env.example` documents each
variable. Defaults are safe for production: DEBUG is off unless the dev runner (`make run`)
turns it on, and with DEBUG off a missing or weak secret stops start-up.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)

# --- Secrets and hosts -------------------------------------------------------------------
_WEAK_SECRET_MARKERS = ("changeme", "change-me", "insecure", "secret", "django-insecure")
MIN_SECRET_KEY_LENGTH = 50


def _secret_key_problem(value: str) -> str | None:
    """Why `value` is not fit to be a production SECRET_KEY, or None if it is."""
    if not value:
        return "DJANGO_SECRET_KEY is not set."
    if len(value) < MIN_SECRET_KEY_LENGTH or len(set(value)) < 5:
        return (
            f"DJANGO_SECRET_KEY is too weak: use at least {MIN_SECRET_KEY_LENGTH} random "
            "characters."
        )
    if any(value.lower().startswith(marker) for marker in _WEAK_SECRET_MARKERS):
        return "DJANGO_SECRET_KEY looks like a placeholder: generate a random one."
    return None


SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

if not DEBUG:
    _problem = _secret_key_problem(SECRET_KEY)
    if _problem:
        raise ImproperlyConfigured(
            f'{_problem} Generate one with: python -c "import secrets; '
            'print(secrets.token_urlsafe(50))"'
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured(
            "DJANGO_ALLOWED_HOSTS is not set: list the host names this site answers to, "
            "comma-separated (for example byok.example.com)."
        )
elif not SECRET_KEY:
    # Development only: `make run` writes a random key into var/; this covers a bare
    # `manage.py` call before that.
    SECRET_KEY = "dev-only-not-secret-" + "x" * 40
    ALLOWED_HOSTS = ALLOWED_HOSTS or ["localhost", "127.0.0.1", "[::1]"]

# --- Key vault ---------------------------------------------------------------------------
# Master keys (KEKs): "id:base64key,..." — the first encrypts, all decrypt. Independent of
# SECRET_KEY. BYOK_MASTER_KEYS_FILE names a file holding the same text (for Docker secrets).
_master_keys_file = env.str("BYOK_MASTER_KEYS_FILE", default="")
if _master_keys_file:
    try:
        BYOK_MASTER_KEYS = Path(_master_keys_file).read_text().strip()
    except OSError as _error:
        raise ImproperlyConfigured(
            f"BYOK_MASTER_KEYS_FILE={_master_keys_file} cannot be read: {_error.strerror}."
        ) from None
else:
    BYOK_MASTER_KEYS = env.str("BYOK_MASTER_KEYS", default="")
if BYOK_MASTER_KEYS:
    from vault.crypto import KeyringError, parse_keyring

    try:
        parse_keyring(BYOK_MASTER_KEYS)
    except KeyringError as _error:
        raise ImproperlyConfigured(f"BYOK_MASTER_KEYS is malformed: {_error}") from None
elif not DEBUG:
    raise ImproperlyConfigured(
        "BYOK_MASTER_KEYS is not set: the key vault needs at least one master key. Generate "
        "one with: python -c \"import base64, os; print('k1:' + "
        'base64.b64encode(os.urandom(32)).decode())"'
    )

# --- Provider calls -----------------------------------------------------------------------
# Let users point keys at private, loopback or link-local addresses (self-hosted models).
# Off in production; `make run` turns it on.
BYOK_ALLOW_PRIVATE_ENDPOINTS = env.bool("BYOK_ALLOW_PRIVATE_ENDPOINTS", default=False)
BYOK_PROVIDER_CONNECT_TIMEOUT = env.float("BYOK_PROVIDER_CONNECT_TIMEOUT", default=10.0)
BYOK_PROVIDER_READ_TIMEOUT = env.float("BYOK_PROVIDER_READ_TIMEOUT", default=120.0)
BYOK_PROVIDER_CALL_DEADLINE = env.float("BYOK_PROVIDER_CALL_DEADLINE", default=300.0)
# Open provider connections per process: a worker runs as many turns at once as its
# concurrency, each holding one connection while it streams.
BYOK_PROVIDER_MAX_CONNECTIONS = env.int("BYOK_PROVIDER_MAX_CONNECTIONS", default=512)
# Chat turns.
BYOK_MAX_MESSAGE_CHARS = env.int("BYOK_MAX_MESSAGE_CHARS", default=100_000)
BYOK_MAX_CONCURRENT_TURNS = env.int("BYOK_MAX_CONCURRENT_TURNS", default=4)
BYOK_RATE_TURNS_PER_MINUTE = env.int("BYOK_RATE_TURNS_PER_MINUTE", default=20)
BYOK_CONTEXT_MAX_CHARS = env.int("BYOK_CONTEXT_MAX_CHARS", default=400_000)
BYOK_MAX_OUTPUT_TOKENS = env.int("BYOK_MAX_OUTPUT_TOKENS", default=4096)
# The output limit of a title written by the model (chat.titles): six words and no more.
BYOK_TITLE_MAX_OUTPUT_TOKENS = env.int("BYOK_TITLE_MAX_OUTPUT_TOKENS", default=20)
BYOK_QUEUED_TURN_TIMEOUT = env.int("BYOK_QUEUED_TURN_TIMEOUT", default=120)
# A running turn's lease: its worker renews it in Redis (every third of this); the reaper
# ends a turn whose lease stayed expired (the worker died) with the text it had saved.
BYOK_TURN_LEASE_SECONDS = env.int("BYOK_TURN_LEASE_SECONDS", default=10)
# How often a running turn's text so far is saved (sealed) to its row while it streams.
BYOK_TURN_CHECKPOINT_SECONDS = env.float("BYOK_TURN_CHECKPOINT_SECONDS", default=2.0)
# How long a worker that cannot reach the database keeps a finished turn's outcome and
# retries storing it (with backoff) before giving up on it (the saved text stays).
BYOK_TURN_STORE_RETRY_SECONDS = env.int("BYOK_TURN_STORE_RETRY_SECONDS", default=300)
BYOK_STREAM_BATCH_SECONDS = env.float("BYOK_STREAM_BATCH_SECONDS", default=0.025)
# How often a worker asks Redis whether the user pressed stop (one MGET for all its turns).
BYOK_CANCEL_POLL_SECONDS = env.float("BYOK_CANCEL_POLL_SECONDS", default=0.2)
BYOK_TURN_STREAM_MAXLEN = env.int("BYOK_TURN_STREAM_MAXLEN", default=50_000)
BYOK_TURN_STREAM_TTL = env.int("BYOK_TURN_STREAM_TTL", default=3600)
BYOK_SSE_HEARTBEAT_SECONDS = env.float("BYOK_SSE_HEARTBEAT_SECONDS", default=15.0)
# /healthz answers within this many seconds whatever is down (core.health).
BYOK_HEALTHZ_TIMEOUT = env.float("BYOK_HEALTHZ_TIMEOUT", default=1.5)
# Redis connections one web process uses for its SSE streams, besides the shared reader.
BYOK_WEB_REDIS_CONNECTIONS = env.int("BYOK_WEB_REDIS_CONNECTIONS", default=10)
# A turn's Celery limits follow the provider deadline.
BYOK_TURN_SOFT_LIMIT = int(BYOK_PROVIDER_CALL_DEADLINE) + 30
BYOK_TURN_HARD_LIMIT = BYOK_TURN_SOFT_LIMIT + 30
# The local demo provider (`make run` starts it and turns this on). Development only.
BYOK_DEMO_PROVIDER = DEBUG and env.bool("BYOK_DEMO_PROVIDER", default=False)
# How often valid keys are re-checked against their provider, in hours.
BYOK_KEY_RECHECK_HOURS = env.int("BYOK_KEY_RECHECK_HOURS", default=24)

# --- Applications ------------------------------------------------------------------------
INSTALLED_APPS = [
    "vault",
    "accounts",
    "keys",
    "chat",
    "usage",
    "ops",
    "privacy",
    # The admin with the operator site (ops.site.OperatorAdminSite) as its default.
    "byok_site.apps.OperatorAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_otp",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "accounts.middleware.SessionActivityMiddleware",
    "accounts.middleware.StaffTwoFactorMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last but one, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
    # Innermost: makes the whole chain run in one thread hop (see its docstring).
    "core.middleware.SyncChain",
]

ROOT_URLCONF = "byok_site.urls"
WSGI_APPLICATION = "byok_site.wsgi.application"
ASGI_APPLICATION = "byok_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "byok_site.context_processors.site",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + busy timeout + IMMEDIATE write transactions: the web and worker processes can
    # write concurrently without "database is locked" (ARCHITECTURE §1). The backend is
    # Django's, with a process's writers queued in Python (core/sqlite/base.py).
    DATABASES["default"]["ENGINE"] = "core.sqlite"
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": (
                "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;PRAGMA foreign_keys=ON;"
            ),
        }
    )
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A bounded connection pool per process (psycopg_pool): a worker running hundreds of
    # turns in threads shares a few connections instead of holding one per thread, which
    # would exhaust the server's max_connections. Connections go back to the pool at the end
    # of each request and task (Django then needs CONN_MAX_AGE = 0).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Django then has the pool check each connection before handing it out: one the server
    # dropped (restart, idle timeout) is replaced instead of failing the first query.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.int("DATABASE_POOL_SIZE", default=16),
        # How long a request or a turn waits for a connection (a busy pool, a database that
        # is away) before the query fails; a turn's worker then retries storing its reply.
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=30.0),
    }
else:  # pragma: no cover - another engine: plain persistent connections
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

# The usage write is one statement, prepared once per connection (PostgreSQL). Off behind
# a pooler that shares server sessions between clients (PgBouncer in transaction mode).
BYOK_DB_PREPARED_STATEMENTS = env.bool("BYOK_DB_PREPARED_STATEMENTS", default=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis and Celery --------------------------------------------------------------------
# Empty only in tests, where a session fixture starts the bundled Redis and fills it in.
REDIS_URL = env.str("REDIS_URL", default="")
if not REDIS_URL and not DEBUG and not env.bool("BYOK_TESTING", default=False):
    raise ImproperlyConfigured(
        "REDIS_URL is not set: point it at your Redis server, for example redis://redis:6379/0."
    )


def celery_broker_url(redis_url: str) -> str:
    """Kombu spells a Unix-socket Redis `redis+socket://`; redis-py spells it `unix://`."""
    if redis_url.startswith("unix://"):
        path, _, query = redis_url.removeprefix("unix://").partition("?")
        db = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("db", "0")
        return f"redis+socket://{path}?virtual_host={db}"
    return redis_url


CELERY_BROKER_URL = celery_broker_url(REDIS_URL)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=300)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=330)
CELERY_TASK_ALWAYS_EAGER = False
WORKER_HEARTBEAT_INTERVAL = env.int("BYOK_WORKER_HEARTBEAT_INTERVAL", default=10)

# --- Authentication ----------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First, so a locked-out account or address is refused before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "accounts.backends.EmailBackend",
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_RESET_TIMEOUT = 60 * 60 * 2

# --- Account security --------------------------------------------------------------------
# Reverse proxies in front of the web server that append to X-Forwarded-For (0 = none: the
# header is ignored). The client address is the Nth entry from the right, so a forged
# X-Forwarded-For neither hides an attacker nor resets their failure count.
BYOK_TRUSTED_PROXY_COUNT = env.int("BYOK_TRUSTED_PROXY_COUNT", default=0)
# Brute force (django-axes): failures per account and per address before a lock-out, and
# how long the lock-out lasts. Failed second-factor codes count as failed logins.
AXES_FAILURE_LIMIT = env.int("BYOK_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("BYOK_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_CLIENT_IP_CALLABLE = "accounts.security.client_ip"
AXES_USERNAME_CALLABLE = "accounts.security.axes_username"
AXES_LOCKOUT_CALLABLE = "accounts.views.locked_out"
AXES_RESET_ON_SUCCESS = False  # a login of one's own account must not clear an address
AXES_DISABLE_ACCESS_LOG = True  # successes go to the user's security log instead
AXES_VERBOSE = False
# Password reset requests per address and per email address within the window.
BYOK_PASSWORD_RESET_LIMIT = env.int("BYOK_PASSWORD_RESET_LIMIT", default=5)
BYOK_PASSWORD_RESET_WINDOW_MINUTES = env.int("BYOK_PASSWORD_RESET_WINDOW_MINUTES", default=60)
# Re-authentication ("sudo mode") lasts this long after a password (+ second factor) entry.
BYOK_SUDO_SECONDS = env.int("BYOK_SUDO_SECONDS", default=600)
# Account exports (ZIP) can be downloaded once, until they expire.
BYOK_EXPORT_TTL_HOURS = env.int("BYOK_EXPORT_TTL_HOURS", default=24)
OTP_TOTP_ISSUER = env.str("BYOK_TOTP_ISSUER", default="BYOK")

# --- Email -------------------------------------------------------------------------------
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="BYOK <noreply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Internationalisation ----------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
# In development WhiteNoise serves straight from the source folders and picks up edits.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Security ----------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env.int("DJANGO_SESSION_COOKIE_AGE", default=60 * 60 * 24 * 14)
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Content Security Policy (django-csp): no inline script or style anywhere (htmx's indicator
# style is off through its meta config in base.html). NONCE lets a template that really
# needs one use <script nonce="{{ request.csp_nonce }}">.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    }
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
if not DEBUG:
    _https = env.bool("DJANGO_HTTPS", default=True)
    SESSION_COOKIE_SECURE = _https
    CSRF_COOKIE_SECURE = _https
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=_https)
    SECURE_HSTS_SECONDS = env.int(
        "DJANGO_HSTS_SECONDS", default=60 * 60 * 24 * 365 if _https else 0
    )
    SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
    SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=False)
    if env.bool("DJANGO_BEHIND_PROXY", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    if not SECURE_HSTS_PRELOAD:
        # Preloading is a commitment the operator makes for the whole domain (and it is
        # hard to undo), so it is opt-in through DJANGO_HSTS_PRELOAD, not a deploy warning.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

# --- Logging -----------------------------------------------------------------------------
LOG_LEVEL = env.str("DJANGO_LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

DEFAULT_EXCEPTION_REPORTER_FILTER = "core.reporting.ByokExceptionReporterFilter"

SITE_NAME = "BYOK"
