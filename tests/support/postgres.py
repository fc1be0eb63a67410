"""A real PostgreSQL server (Debian's ``postgresql``) for tests: ``initdb`` into a fresh temp
dir, listening on 127.0.0.1 (a free port) and a unix socket in that dir, run as the ``postgres``
user when the tests run as root (the server refuses root). ``restart()`` stops and starts it on
the same port and data, for reconnect tests.

Usage::

    from tests.support.postgres import postgres_server  # pytest fixture
    def test_x(postgres_server): ... postgres_server.port ...
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .kbs import free_port

__all__ = ["PostgresServer", "init_postgres", "postgres_available", "postgres_server"]


def _bin(name: str) -> str | None:
    """``name`` from PATH, else from Debian's versioned ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).is_file():
            return str(d / name)
    return None


def postgres_available() -> bool:
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


@dataclass
class PostgresServer:
    root: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"
    db: str = "postgres"

    def _as_owner(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, timeout=120, check=False)

    def _ctl(self, action: str) -> None:
        opts = f"-p {self.port} -h {self.host} -k {self.root} -F -c fsync=off -c max_connections=40"
        argv = [
            _bin("pg_ctl") or "pg_ctl",
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
        ]
        if action in ("start", "restart"):
            argv += ["-o", opts]
        if action in ("stop", "restart"):
            argv += ["-m", "fast"]
        r = self._as_owner(*argv, action)
        if r.returncode != 0:
            log = (
                (self.root / "log").read_text(errors="replace")[-2000:]
                if (self.root / "log").exists()
                else ""
            )
            raise RuntimeError(f"pg_ctl {action} failed: {r.stderr.decode(errors='replace')[-500:]} {log}")

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop")

    def restart(self) -> None:
        self._ctl("restart")

    def toml(self) -> str:
        """``[storage_backend.backends.postgres]`` for a kbs-config.toml."""
        return (
            f'[storage_backend.backends.postgres]\ndb = "{self.db}"\nusername = "{self.user}"\n'
            f'host = "{self.host}"\nport = {self.port}\n'
        )


def init_postgres(root: Path, port: int) -> PostgresServer:
    """A new cluster in ``root`` (made owned by ``postgres`` when run as root), not started."""
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    srv = PostgresServer(root=root, port=port)
    r = srv._as_owner(_bin("initdb") or "initdb", "-D", str(root / "data"), "-U", "postgres", "-A", "trust", "--no-sync",
                      "-E", "UTF8", "--locale=C")  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"initdb failed: {r.stderr.decode(errors='replace')[-500:]}")
    return srv


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    if not postgres_available():
        pytest.skip("PostgreSQL (Debian postgresql) not installed")
    # not under pytest's tmp dir: that one is private to root and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="kbs-pg-"))
    srv = init_postgres(root, free_port())
    try:
        srv.start()
        yield srv
    finally:
        if (root / "data" / "postmaster.pid").exists():
            srv._as_owner(
                _bin("pg_ctl") or "pg_ctl", "-D", str(root / "data"), "-m", "immediate", "-w", "stop"
            )
        shutil.rmtree(root, ignore_errors=True)
