"""Fields that platforms' options schemas share (marshmallow), so each platform states only
what is its own."""

from __future__ import annotations

from marshmallow import fields, validate

# An API base as an operator writes it: scheme, host, optional path; no spaces, query or
# fragment (the path of each call is appended to it).
HTTP_BASE = r"\Ahttps?://[^\s/?#]+(?:/[^\s?#]*)?\Z"


def api_base_field() -> fields.String:
    """`api_base`: another base for the platform's API (a proxy, the tests' stand-in)."""
    return fields.String(validate=validate.Regexp(HTTP_BASE, error="must be an http(s) URL"))
