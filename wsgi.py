"""gunicorn entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from webhooks.web.app import create_app

app = create_app()
