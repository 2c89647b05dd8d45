"""The baseline: a bare Flask app that reads the POSTed body and answers a small JSON 200.

Run under the same gunicorn settings as the service (bench/gunicorn_bare_conf.py), so the ratio
service/bare isolates what the service adds: verify, parse, durable commit, dispatcher.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask("bare")


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@app.post("/webhooks/<source_name>")
def receive(source_name: str) -> tuple[Response, int]:
    request.get_data(cache=False)
    return jsonify(status="accepted", delivery_id=1), 200
