"""The layout's arrows are enforced: import-linter keeps the contracts and fails on a wrong import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(tmp: Path) -> Path:
    root = tmp / "repo"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    for pkg in ("models", "streams"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_contracts_are_kept() -> None:
    r = lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broken" in r.stdout and "0 broken" in r.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        # a stage importing a later one: the rolling state must not know the detectors
        ("models/state/rolling.py", "from models.detect import monitor", "models stages"),
        # the classifier must not know the ingest pipeline
        ("models/classify/classifier.py", "import models.ingest.pipeline", "models stages"),
        # the core must not import the simulator
        ("models/detect/detectors.py", "import models.sim.simulator", "models stages"),
        # models must not import streams, nor an I/O library
        ("models/ingest/pipeline.py", "import streams.worker.settings", "streams (I/O)"),
        ("models/schema.py", "import aiokafka", "models stays pure"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    root = copy_tree(tmp_path)
    f = root / module
    f.write_text(f.read_text() + f"\n{bad_import}  # deliberate\n")
    r = lint(root)
    assert r.returncode != 0, r.stdout
    broken = [ln for ln in r.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), r.stdout
