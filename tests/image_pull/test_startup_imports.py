"""What a pull loads at start-up: the encryption stack only for encrypted layers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps([n for n in {names!r} if n in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, check=True, text=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def test_puller_start_up_leaves_the_encryption_stack_unloaded() -> None:
    heavy = ("cryptography", "image_pull.ocicrypt", "image_pull.ocicrypt.layer")
    assert _loaded_after("import image_pull.puller, image_pull.pull_cli", heavy) == []
    # the probe does see it when something loads it
    assert "cryptography" in _loaded_after("import image_pull.ocicrypt", heavy)
