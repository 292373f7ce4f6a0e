# BYOK production image: web (uvicorn), worker and beat all run from it.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system byok && useradd --system --gid byok --home-dir /app --shell /usr/sbin/nologin byok

WORKDIR /app
COPY . .
RUN pip install .
# collectstatic needs settings; these throwaway values are used for this one step only.
RUN DJANGO_SECRET_KEY=collectstatic-only-$(python -c "import secrets; print(secrets.token_hex(32))") \
    DJANGO_ALLOWED_HOSTS=localhost REDIS_URL=redis://localhost:6379/0 \
    DJANGO_STATIC_ROOT=/app/staticfiles \
    python manage.py collectstatic --noinput --verbosity 0 \
    && mkdir -p /app/var && chown -R byok:byok /app/var

ENV DJANGO_STATIC_ROOT=/app/staticfiles
USER byok
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status in (200, 503) else 1)"
CMD ["uvicorn", "byok_site.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-proxy-headers"]
