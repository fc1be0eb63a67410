"""attestation.eventlog sits below the TEE packages: a TEE's register backend
(attestation.tdx.registers, attestation.tpm.registers) imports it, never the
other way (not even inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import attestation.eventlog

_TEES = {"snp", "tdx", "nvidia", "azure", "cca", "csv", "se", "sgx", "tpm", "sample", "aa"}


def _imported_modules(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_eventlog_imports_no_tee_package() -> None:
    package = Path(attestation.eventlog.__file__).parent
    upward = {
        (path.name, module)
        for path in sorted(package.glob("*.py"))
        for module in _imported_modules(path.read_text())
        if module.split(".")[:2] in ([["attestation", tee] for tee in _TEES])
    }
    assert upward == set()
    assert (package / "registers.py").exists()  # the scan did read the package
