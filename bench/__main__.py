"""`make bench`: run every benchmark in this folder, one after another.

Each benchmark measures our code next to a real peer in the same run (see
its docstring) and prints its own figures and ratios. Run one alone with
``.venv/bin/python bench/<name>.py --help``. Pass names to run a subset:
``python -m bench snp_verify pull_vs_skopeo``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Helper modules that are not benchmarks of their own.
NOT_BENCHMARKS = {"__init__", "__main__", "_common", "nvidia_nvt_peer"}


def main(argv: list[str]) -> int:
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
