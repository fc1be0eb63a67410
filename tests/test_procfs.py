"""The one /proc status reader the tests and benchmarks share."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.procfs import ProcStatusError, status_kib


def test_reads_this_process_and_a_child() -> None:
    assert status_kib("self", "VmHWM") >= status_kib("self", "VmRSS") > 1024
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            assert status_kib(child.pid, "VmRSS") > 0
        finally:
            child.kill()


def test_a_zombie_has_no_rss_and_says_so() -> None:
    """A process that exited but was not reaped keeps /proc/PID/status without Vm* lines:
    the reader raises instead of reading it as 0 kB."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still a zombie
        with pytest.raises(ProcStatusError, match="no VmRSS"):
            status_kib(child.pid, "VmRSS")
    finally:
        child.wait()
