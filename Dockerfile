# convert-webhooks: nginx in front of gunicorn on a slim Python base, as a non-root user.
# nginx reads every request in full before gunicorn's threads see it, so slow clients cannot
# hold them (deploy/nginx.conf). gunicorn runs threaded workers (gthread, gunicorn.conf.py):
# concurrent requests share one durable commit (group commit). deploy/entrypoint.sh runs and
# stops both.
FROM python:3.11-slim

# PROMETHEUS_MULTIPROC_DIR: where each gunicorn worker keeps its metric counters for /metrics
# to sum; gunicorn.conf.py creates it (0700, the app user's) and empties it at every start.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NGINX_PORT=8000 \
    NGINX_RUNTIME_DIR=/tmp/nginx \
    CONVERT_WEBHOOKS_BIND=127.0.0.1:8001 \
    CONVERT_WEBHOOKS_CONFIG=/app/config/example.toml \
    CONVERT_WEBHOOKS_DATABASE_URL=sqlite:////data/convert-webhooks.db \
    PROMETHEUS_MULTIPROC_DIR=/tmp/convert-webhooks-metrics \
    CONVERT_WEBHOOKS_SAMPLES=/app/tests/fixtures

# Debian's nginx; the base image's policy-rc.d keeps the package from starting it.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md wsgi.py gunicorn.conf.py ./
COPY webhooks ./webhooks
COPY adapters ./adapters
COPY config ./config
COPY deploy ./deploy
# The platforms' sample payloads `convert-webhooks send-test` signs and posts.
COPY tests/fixtures ./tests/fixtures
RUN pip install . \
    && chmod 0755 deploy/entrypoint.sh \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app /data

USER app
VOLUME ["/data"]
# Only nginx is published; gunicorn listens on 127.0.0.1:8001 inside the container.
EXPOSE 8000

# Through nginx, so it checks both processes.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NGINX_PORT', '8000'), timeout=2).status != 200)"

CMD ["/app/deploy/entrypoint.sh"]
