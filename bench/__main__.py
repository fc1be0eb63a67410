"""`make bench`: the performance table (``bench/table.py``), or named benchmarks.

With no names (or only options such as ``--quick``) this runs
``bench/table.py``: every target row with our figure, the peer's and the
ratio, written to ``bench/results/latest.json`` and plotted. Each benchmark
measures our code next to a real peer in the same run (see its docstring).
Run one alone with ``.venv/bin/python bench/<name>.py --help``; pass names to
run those: ``python -m bench snp_verify pull_vs_skopeo``; ``--all`` runs every
benchmark of the folder one after another.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Helper modules that are not benchmarks of their own.
NOT_BENCHMARKS = {"__init__", "__main__", "_common", "nvidia_nvt_peer", "table"}


def main(argv: list[str]) -> int:
    if argv != ["--all"] and (not argv or argv[0].startswith("-")):
        from bench import table

        return table.main(argv)
    if argv == ["--all"]:
        argv = []
    names = argv or sorted(p.stem for p in HERE.glob("*.py") if p.stem not in NOT_BENCHMARKS)
    failed = []
    for name in names:
        print(f"\n=== bench/{name}.py", flush=True)
        t = time.monotonic()
        rc = subprocess.run([sys.executable, str(HERE / f"{name}.py")], cwd=HERE.parent).returncode
        print(f"=== {name}: exit {rc} after {time.monotonic() - t:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
