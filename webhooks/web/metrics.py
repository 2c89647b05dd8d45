"""GET /metrics (Prometheus). Being built (issue 10): no routes yet."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("metrics", __name__)
