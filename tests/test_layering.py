"""Who may import whom among the KBS packages: the shared wire code
(:mod:`kbs_protocol`) stands below both the KBS (:mod:`kbs`) and its client
(:mod:`kbs_client`), and neither of those imports the other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> top-level packages of this repository it must never import
FORBIDDEN = {
    "kbs": {"kbs_client"},
    "kbs_protocol": {"kbs", "kbs_client", "cdh", "attestation", "image_pull", "guest_pull", "coco_rpc"},
    "kbs_client": {"kbs"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = [
        f"{f.relative_to(ROOT)} imports {name}"
        for f in files
        for name in sorted(_imports(f) & FORBIDDEN[package])
    ]
    assert not bad, bad


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text(
        "import os\nfrom kbs_client.resources import get_resource\n\ndef f():\n    import kbs.server\n"
    )
    assert _imports(p) == {"os", "kbs_client", "kbs"}
