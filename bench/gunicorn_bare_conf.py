"""gunicorn settings for the bare baseline app: every plain setting of the service's own
gunicorn.conf.py (bind, workers, worker class, timeouts, keep-alive, logs), none of its hooks
(they start the service's dispatcher, which the bare app does not have)."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

_CONF = (
    os.environ.get("BENCH_GUNICORN_CONF")
    or Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
)
_SERVICE = runpy.run_path(str(_CONF))
_PLAIN = (str, int, float, bool, type(None))

globals().update(
    {
        name: value
        for name, value in _SERVICE.items()
        if not name.startswith("_") and isinstance(value, _PLAIN)
    }
)
