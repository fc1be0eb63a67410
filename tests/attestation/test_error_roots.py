"""Every TEE package's errors hang off one root under AttestationError, and
class names do not repeat inside :mod:`attestation` (issue 18: errors that
carry structure)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import attestation
from attestation.errors import AttestationError

#: package -> its root error class
ROOTS = {
    "nvidia": "NvidiaError",
    "azure": "AzureError",
    "cca": "CcaError",
    "csv": "CsvError",
    "se": "SeError",
    "sgx": "SgxError",
    "tpm": "TpmError",
    "aa": "AaError",
    "snp": "SnpError",
    "tdx": "TdxError",
    "sample": "SampleError",
    "eventlog": "EventLogError",
}


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_one_root_per_package(package: str) -> None:
    errors = importlib.import_module(f"attestation.{package}.errors")
    root = getattr(errors, ROOTS[package])
    assert root.__bases__ == (AttestationError,)
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(issubclass(c, root) for c in classes), package
    # the tree is documented in the module docstring, every class by name
    assert errors.__doc__ is not None
    assert all(c.__name__ in errors.__doc__ for c in classes), package


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_no_error_class_outside_errors_py(package: str) -> None:
    pkg = importlib.import_module(f"attestation.{package}")
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name == "errors":
            continue
        mod = importlib.import_module(f"attestation.{package}.{info.name}")
        own = [
            name
            for name, obj in vars(mod).items()
            if inspect.isclass(obj)
            and issubclass(obj, Exception)
            and obj.__module__ == mod.__name__
            and not name.startswith("_")  # a module's private control flow (a retry, a usage exit)
        ]
        assert own == [], f"{mod.__name__} defines {own}: they belong in errors.py"


def test_error_class_names_are_unique_in_attestation() -> None:
    seen: dict[str, str] = {}
    for info in pkgutil.walk_packages(attestation.__path__, "attestation."):
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == mod.__name__:
                assert name not in seen or seen[name] == mod.__name__, (
                    f"{name}: {seen.get(name)} and {mod.__name__}"
                )
                seen[name] = mod.__name__
