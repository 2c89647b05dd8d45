# convert-webhooks: gunicorn on a slim Python base, as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CONVERT_WEBHOOKS_BIND=0.0.0.0:8000 \
    CONVERT_WEBHOOKS_CONFIG=/app/config/example.toml \
    CONVERT_WEBHOOKS_DATABASE_URL=sqlite:////data/convert-webhooks.db

WORKDIR /app
COPY pyproject.toml README.md wsgi.py gunicorn.conf.py ./
COPY webhooks ./webhooks
COPY adapters ./adapters
COPY config ./config
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app /data

USER app
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
