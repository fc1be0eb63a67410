"""Real parts for a KBS fleet test: a shared store (redis-server or PostgreSQL),
KBS replicas started from one generated config each, HAProxy in front of them
(round robin, so one session's requests land on different replicas) and a TCP
gate that can cut one replica off from the store.

Every process binds 127.0.0.1 only and is stopped by :meth:`Fleet.close`.
Used by ``tests/integration/ha_harness.py`` (``make ha-test``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.support.kbs import free_port, make_admin_token, write_config
from tests.support.postgres import PostgresServer, init_postgres

__all__ = [
    "Fleet",
    "HaProxy",
    "PgStore",
    "RedisServer",
    "Replica",
    "StoreServer",
    "TcpGate",
    "proc_fds",
]

ROOT = Path(__file__).resolve().parents[2]


def _wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, wait: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class StoreServer:
    """A store the replicas share; ``restart`` keeps what was written."""

    name: str
    port: int

    def url(self, port: int | None = None) -> str:
        raise NotImplementedError

    def storage_toml(self, port: int | None = None) -> tuple[str, str]:
        """``(storage_type, backends table text)`` for a replica reaching the store on ``port``."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class RedisServer(StoreServer):
    """``redis-server`` with an fsync-always append-only file, so a restart loses no acked write."""

    workdir: Path
    port: int = field(default_factory=free_port)
    name: str = "redis"
    proc: subprocess.Popen[bytes] | None = None

    def url(self, port: int | None = None) -> str:
        return f"redis://127.0.0.1:{port or self.port}/0"

    def storage_toml(self, port: int | None = None) -> tuple[str, str]:
        return "Redis", f'[storage_backend.backends.redis]\nurl = "{self.url(port)}"\n'

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        _wait_port(self.port, 20, "redis-server", self.proc)
        # loading the AOF: answer PING before the replicas use it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "PING"], capture_output=True, timeout=5)
            if out.stdout.strip() == b"PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        _stop(self.proc)  # SIGTERM: redis flushes the AOF and exits


@dataclass
class PgStore(StoreServer):
    """A throwaway PostgreSQL cluster (:class:`tests.support.postgres.PostgresServer`)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    name: str = "postgres"
    _srv: PostgresServer | None = None

    def storage_toml(self, port: int | None = None) -> tuple[str, str]:
        assert self._srv is not None
        return "Postgres", (f'[storage_backend.backends.postgres]\ndb = "{self._srv.db}"\n'
                            f'username = "{self._srv.user}"\nhost = "127.0.0.1"\nport = {port or self.port}\n')  # fmt: skip

    def start(self) -> None:
        if self._srv is None:
            self._srv = init_postgres(self.workdir, self.port)
        self._srv.start()

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.stop()


@dataclass
class Replica:
    """One KBS process; ``kill`` is SIGKILL, ``start`` reuses the same port and config."""

    index: int
    port: int
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"kbs-{self.index}"

    def start(self, timeout: float = 30) -> None:
        exe = ROOT / ".venv" / "bin" / "kbs"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kbs.cli"]
        log = self.log_path.open("ab")
        env = {**os.environ, "KBS_LOG_LEVEL": os.environ.get("KBS_LOG_LEVEL", "warning")}
        self.proc = subprocess.Popen([*cmd, "--config-file", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, env=env)  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-600:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout}s")

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class HaProxy:
    """HAProxy in HTTP mode, round robin over the replicas, health-checked on /healthz; each
    answer carries ``X-Served-By: <replica name>`` so a client can see where it landed."""

    workdir: Path
    backends: list[tuple[str, int]]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        servers = "\n".join(
            f"  server {name} 127.0.0.1:{port} check inter 300 fall 2 rise 2" for name, port in self.backends
        )
        return f"""global
  maxconn 1024
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout queue 10s
  retries 2
  option redispatch
  retry-on conn-failure empty-response
frontend kbs_front
  bind 127.0.0.1:{self.port}
  default_backend kbs_replicas
backend kbs_replicas
  balance roundrobin
  option httpchk GET /healthz
  http-response set-header X-Served-By %s
{servers}
"""

    def start(self) -> None:
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(self.config_text())
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config refused: {check.stderr.decode(errors='replace')[-400:]}")
        log = (self.workdir / "haproxy.log").open("ab")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_port(self.port, 20, "haproxy", self.proc)

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class TcpGate:
    """A TCP forwarder between one replica and the store (a child process). ``cut`` drops every
    connection and refuses new ones (a partition); ``heal`` lets traffic through again."""

    workdir: Path
    target_port: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / f"gate-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.tcpgate", str(self.port), str(self.target_port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
        )  # fmt: skip
        log.close()
        _wait_port(self.port, 20, "tcp gate", self.proc)

    def cut(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)

    def heal(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR2)

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class Fleet:
    """``n`` replicas on one store behind one HAProxy; the last replica reaches the store
    through a :class:`TcpGate` so it can be partitioned."""

    workdir: Path
    store: StoreServer
    n: int = 3
    replicas: list[Replica] = field(default_factory=list)
    proxy: HaProxy | None = None
    gate: TcpGate | None = None
    admin_key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.port}"

    def admin_token(self, lifetime_s: int = 3600) -> str:
        return make_admin_token(self.admin_key, lifetime_s=lifetime_s)

    def start(self, extra_toml: str = "") -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pub = self.workdir / "admin.pub"
        pub.write_bytes(self.admin_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
        at_rest = self.workdir / "at-rest.key"
        at_rest.write_text(os.urandom(32).hex())
        self.store.start()
        self.gate = TcpGate(self.workdir, self.store.port)
        self.gate.start()
        for i in range(self.n):
            port = free_port()
            store_port = self.gate.port if i == self.n - 1 else self.store.port
            storage, backends = self.store.storage_toml(store_port)
            cfg = write_config(self.workdir, port, pub, storage=storage, signer_key=True,
                               at_rest_key=at_rest, storage_dir=self.workdir / f"unused-{i}",
                               extra_toml=backends + extra_toml)  # fmt: skip
            r = Replica(i, port, cfg, self.workdir / f"kbs-{i}.log")
            r.start()
            self.replicas.append(r)
        self.proxy = HaProxy(self.workdir, [(r.name, r.port) for r in self.replicas])
        self.proxy.start()

    def close(self) -> None:
        if self.proxy:
            self.proxy.stop()
        for r in self.replicas:
            r.stop()
        if self.gate:
            self.gate.stop()
        self.store.stop()
