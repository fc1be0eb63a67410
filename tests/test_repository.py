"""The repository stands alone: vectors are inside it, each with its provenance,
and no tracked file points outside it (scripts/check_paths.py, also run by ``make lint``)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.vectors import EVIDENCE, PLATFORMS, MissingVector, evidence, vector

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_paths.py"
_ROW = re.compile(
    r"^\| `([^`]+)` \| https://github\.com/([\w.-]+/[\w.-]+) \| `([0-9a-f]{40})` \| (.+) \| ([\w.-]+) \| `([0-9a-f]{64})` \|$"
)


def _provenance(platform: str) -> dict[str, tuple[str, str, str, str, str]]:
    rows = {}
    for line in (evidence(platform) / "PROVENANCE.md").read_text().splitlines():
        m = _ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4), m.group(5), m.group(6))
    return rows


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_vector_has_provenance_and_matches_it(platform: str) -> None:
    folder = evidence(platform)
    assert (folder / "MANIFEST.md").is_file()
    rows = _provenance(platform)
    files = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in ("MANIFEST.md", "PROVENANCE.md")
    }
    assert files, f"no vectors under {folder}"
    assert files == set(rows), (
        f"files without provenance: {sorted(files - set(rows))}; rows without file: {sorted(set(rows) - files)}"
    )
    for rel, (repo, commit, path, licence, sha) in rows.items():
        assert licence in ("Apache-2.0", "MIT"), (rel, licence)
        assert path.startswith("`") or path.startswith("derived:"), (rel, path)
        assert repo and commit
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == sha, (
            f"{platform}/{rel} differs from its recorded sha256"
        )


def test_a_missing_vector_is_an_error_not_a_skip() -> None:
    with pytest.raises(MissingVector, match=r"snp/trustee/no-such-report\.bin"):
        vector("snp", "trustee/no-such-report.bin")
    with pytest.raises(ValueError):
        evidence("sgx-epid")
    assert vector("tdx", "trustee/tdx_quote_4.dat").parent.parent == EVIDENCE / "tdx"


def test_no_tracked_file_points_outside_the_repository() -> None:
    cp = subprocess.run([sys.executable, str(CHECK)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")  # installed by make deps
@pytest.mark.parametrize(
    "line",
    [
        "see " + "../" + "shar" + "ed/fixtures/evidence/snp",
        'P = "/' + 'work/shared/x"',
        "os.environ['COCO_" + "SHARED']",
        "cache = '/" + "home/alice/.cache'",
        "KEY = '/" + "root/.ssh/id'",
        "docs in " + "shared/" + "reference/evidence.md",
    ],
)
def test_the_path_lint_catches_an_outside_path(tmp_path: Path, line: str) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(CHECK, tmp_path / "scripts" / "check_paths.py")
    (tmp_path / "ok.py").write_text("HOME = '/home'\nP = 'tests/fixtures/evidence/snp'\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    clean = subprocess.run(
        [sys.executable, "scripts/check_paths.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stdout
    (tmp_path / "bad.md").write_text(f"first line\n{line}\n")
    cp = subprocess.run(
        [sys.executable, "scripts/check_paths.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert cp.returncode == 1
    assert cp.stdout.startswith("bad.md:2: "), cp.stdout
