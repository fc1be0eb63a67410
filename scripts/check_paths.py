#!/usr/bin/env python3
"""Fail when a tracked file points outside the repository.

The repository stands alone: no file may name a sibling checkout of the project,
an environment variable that locates one, or an absolute path of one machine
(a build host's work tree, a home folder). Run by ``make lint`` and by
``tests/test_repository.py``. Exit status 1 and one ``path:line: text`` per hit.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# Each pattern is written so that this file does not match itself.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a sibling folder of the checkout", re.compile(r"\.\.[/\\]shared\b")),
    ("a document outside the repository", re.compile(r"\bshare[d]/(reference|fixtures|checks|DESIGN)")),
    ("a build host's work tree", re.compile(r"(?<![\w.])/wor[k]/")),
    ("an environment variable locating files outside the tree", re.compile(r"COCO_SHARE[D]")),
    ("a home folder", re.compile(r"(?<![\w.])(/home/[A-Za-z0-9_.-]+/|/roo[t]/|/Users/[A-Za-z0-9_.-]+/)")),
)


def tracked_files(root: Path) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return [root / name for name in out.decode().split("\0") if name]


def hits(root: Path) -> list[str]:
    found: list[str] = []
    for path in tracked_files(root):
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue  # deleted in the work tree, or a submodule
        if b"\0" in data[:8192]:
            continue  # binary (evidence vectors, images)
        text = data.decode("utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for what, pattern in PATTERNS:
                if pattern.search(line):
                    rel = path.relative_to(root).as_posix()
                    found.append(f"{rel}:{lineno}: {what}: {line.strip()[:160]}")
                    break
    return found


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    found = hits(root)
    for line in found:
        print(line)
    if found:
        print(f"check_paths: {len(found)} line(s) point outside the repository", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
