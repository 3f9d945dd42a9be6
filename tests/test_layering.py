"""The dependency rule of docs/architecture.md, checked by import-linter.

The contracts live in pyproject.toml (``[tool.importlinter]``): the stages form layers that
import only downward along the data flow, and no sibling modules import each other in a
cycle. ``exhaustive = true`` makes a new top-level package fail here until it is placed."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency: lint-imports should be installed"
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout
