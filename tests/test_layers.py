"""The import contract (pyproject's [tool.importlinter], run by ./scripts/test) holds for the
code, and fails, naming the import, when a lower layer reaches up: checked on a copy of the
packages with one wrong import planted."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter not installed (pip install -e '.[dev]')"
)


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)},
    )


def copy_of_the_code(tmp_path: Path) -> Path:
    for name in ("webhooks", "adapters"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def plant(root: Path, module: str, line: str) -> None:
    path = root / module
    path.write_text(path.read_text() + f"\n{line}  # planted\n")


def test_the_code_keeps_the_contract(tmp_path: Path) -> None:
    done = lint(copy_of_the_code(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "named"),
    [
        # storage reaching up into delivery
        (
            "webhooks/storage/queue.py",
            "from webhooks.delivery import decide",
            "webhooks.storage.queue -> webhooks.delivery.decide",
        ),
        # an adapter reaching into storage (sideways)
        (
            "adapters/base.py",
            "import webhooks.storage.schema",
            "adapters.base -> webhooks.storage.schema",
        ),
        # the core importing a framework
        ("webhooks/core/money.py", "import sqlalchemy", "webhooks.core.money -> sqlalchemy"),
        # convert and attribution are independent of each other
        (
            "webhooks/convert/legacy.py",
            "from webhooks.attribution import pairs",
            "webhooks.convert.legacy -> webhooks.attribution.pairs",
        ),
    ],
)
def test_a_planted_wrong_import_fails_and_is_named(
    tmp_path: Path, module: str, line: str, named: str
) -> None:
    root = copy_of_the_code(tmp_path)
    plant(root, module, line)
    done = lint(root)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
    assert named in done.stdout
