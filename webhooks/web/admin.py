"""The status page at /admin. Being built (issue 10): no routes yet."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("admin", __name__)
