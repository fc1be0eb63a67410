"""The guest set stays free of the server's dependencies.

The guest's console scripts run inside the confidential guest (its TCB); the
KBS's libraries (aiohttp, regopy, redis, ...) must not be imported by them, or
a guest install (``requirements/guest.lock.txt``, no ``server`` extra) would break
and the TCB would grow. Each module is imported in a fresh interpreter, so what
another test imported cannot hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]

#: imported only by the KBS (the `server` extra) or by tooling
SERVER_MODULES = ("aiohttp", "regopy", "redis", "psycopg", "psycopg2", "asyncpg", "kbs", "yarl", "multidict")
#: console scripts that run on the KBS side (their module is in the ``kbs`` package;
#: scripts/ci-wheel.sh classifies them the same way)
SERVER_SCRIPTS = {name for name, target in SCRIPTS.items() if target.split(".")[0].split(":")[0] == "kbs"}
#: console scripts of the guest set; a new script must be added to one of the two lists
GUEST_SCRIPTS = {
    "attestation-agent",
    "confidential-data-hub",
    "cdh-oneshot",
    "api-server-rest",
    "kbs-client",
    "coco-image",
    "coco-verify",
    "coco-guest-pull",
}
#: guest scripts allowed one server-side library: api-server-rest is served by aiohttp
#: (installed with the `guest-rest` extra; see docs/differences.md)
ALLOWED = {"api-server-rest": {"aiohttp", "yarl", "multidict"}}

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
roots = {name.split(".")[0] for name in sys.modules}
print(json.dumps(sorted(roots)))
"""


def _loaded(module: str) -> set[str]:
    cp = subprocess.run(
        [sys.executable, "-c", _PROBE, module], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert cp.returncode == 0, cp.stderr
    return set(json.loads(cp.stdout))


def test_every_console_script_is_classified() -> None:
    assert set(SCRIPTS) == GUEST_SCRIPTS | SERVER_SCRIPTS, "classify new console scripts as guest or server"
    assert not GUEST_SCRIPTS & SERVER_SCRIPTS
    assert set(ALLOWED) <= GUEST_SCRIPTS


@pytest.mark.parametrize("script", sorted(GUEST_SCRIPTS))
def test_guest_script_imports_no_server_dependency(script: str) -> None:
    module = SCRIPTS[script].split(":")[0]
    loaded = _loaded(module)
    forbidden = set(SERVER_MODULES) - ALLOWED.get(script, set())
    assert not loaded & forbidden, f"{script} ({module}) imports {sorted(loaded & forbidden)}"


def test_the_probe_sees_a_server_import() -> None:
    """The check can fail: the KBS's entry point does load its server libraries."""
    loaded = _loaded(SCRIPTS["kbs"].split(":")[0])
    assert {"aiohttp", "kbs"} <= loaded


def test_guest_lock_holds_no_server_package() -> None:
    text = (ROOT / "requirements" / "guest.lock.txt").read_text()
    pinned = {
        line.split("==")[0] for line in text.splitlines() if "==" in line and not line.startswith((" ", "#"))
    }
    assert pinned, "requirements/guest.lock.txt pins nothing"
    assert not pinned & {
        "aiohttp",
        "regopy",
        "redis",
        "psycopg",
        "psycopg2",
        "asyncpg",
        "yarl",
        "multidict",
    }, pinned
    for name in ("cryptography", "grpcio", "protobuf", "httpx"):
        assert name in pinned, name
    for lock in ("guest", "server", "dev"):
        body = (ROOT / "requirements" / f"{lock}.lock.txt").read_text()
        entries = [line for line in body.splitlines() if "==" in line and not line.startswith((" ", "#"))]
        assert entries and all(line.rstrip().endswith("\\") for line in entries), (
            f"{lock}.txt: an entry without hashes"
        )
        assert body.count("--hash=sha256:") >= len(entries)


_WALK = """
import importlib, json, pkgutil, sys
skip = set(sys.argv[2:])
seen = []
for top in sys.argv[1].split(","):
    pkg = importlib.import_module(top)
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        if info.name not in skip:
            importlib.import_module(info.name)
            seen.append(info.name)
print(json.dumps({"modules": seen, "roots": sorted({n.split(".")[0] for n in sys.modules})}))
"""


def test_no_guest_module_imports_a_server_dependency() -> None:
    """Every module of the guest packages, not only the entry points."""
    guest = "attestation,cdh,image_pull,guest_pull,kbs_client,kbs_protocol,coco_rpc,coco_common"
    cp = subprocess.run(
        [sys.executable, "-c", _WALK, guest, "cdh.api_server_rest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert len(out["modules"]) > 100
    assert not set(out["roots"]) & set(SERVER_MODULES), sorted(set(out["roots"]) & set(SERVER_MODULES))


def test_package_data_globs_cover_every_runtime_file() -> None:
    """Files the product loads at run time (roots, policies, protos, ...) go into the wheel:
    each tracked non-Python file of a product package matches a package-data glob
    (the wheel itself is exercised by scripts/ci-wheel.sh in CI)."""
    import fnmatch

    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["*"]
    packages = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", *sorted(set(packages))], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    docs = ("MANIFEST", "LICENSE", "NOTICE")  # provenance notes, not read at run time
    data = [
        f for f in listed.split("\0") if f and not f.endswith((".py", ".md")) and Path(f).name not in docs
    ]
    assert any(f.endswith(".rego") for f in data) and any(f.endswith(".pem") for f in data), data
    uncovered = [f for f in data if not any(fnmatch.fnmatch(Path(f).name, g) for g in globs)]
    assert not uncovered, f"not in the wheel (add a glob to [tool.setuptools.package-data]): {uncovered}"


@pytest.mark.parametrize("module", ["attestation.aa.cli", "cdh.cli"])
def test_daemon_start_up_leaves_grpc_and_httpx_unloaded(module: str) -> None:
    """AA and CDH serve ttRPC on a Unix socket: grpcio is loaded only for a gRPC address and
    httpx with the first HTTP client, so neither costs start-up time or idle memory."""
    code = (
        f"import json, sys, {module}, kbs_protocol.uri, kbs_client.errors; "
        "print(json.dumps([m for m in ('grpc', 'httpx', 'kbs_client.admin') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def test_kbs_client_exports_load_on_first_use() -> None:
    code = (
        "import sys, kbs_client; assert 'kbs_client.rcar' not in sys.modules; "
        "from kbs_client import PROTOCOL_VERSION, TeeKeyPair, attest; "
        "import kbs_client.rcar as r; assert attest is r.attest and PROTOCOL_VERSION == r.PROTOCOL_VERSION; "
        "assert all(hasattr(kbs_client, n) for n in kbs_client.__all__); "
        "print(TeeKeyPair.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "kbs_client.tee_key"


#: runs a daemon's real start-up in this interpreter and, once its socket is there,
#: prints what it has imported (a daemon thread watches; the daemon keeps the main thread)
_IDLE_PROBE = """
import importlib, json, os, sys, threading, time
sock, target, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
def watch():
    while not os.path.exists(sock):
        time.sleep(0.01)
    time.sleep(0.2)
    print(json.dumps(sorted(sys.modules)), flush=True)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
module, func = target.split(":")
getattr(importlib.import_module(module), func)(argv)
"""

#: what an idle AA or CDH must not carry (loaded at first use): the HTTP client,
#: gRPC, cryptography (~7 MiB resident), image_pull's engine (CDH's first
#: PullImage; the registry settings it parses at start are plain data),
#: importlib.metadata (email, zipfile, csv) and tempfile (shutil, bz2, lzma, random)
_FIRST_USE_ONLY = (
    "httpx",
    "grpc",
    "cryptography",
    "image_pull.puller",
    "image_pull.registry",
    "image_pull.unpack",
    "image_pull.trust",
    "image_pull.ocicrypt",
    "importlib.metadata",
    "email",
    "zipfile",
    "tempfile",
)


@pytest.mark.parametrize("daemon", ["attestation-agent", "confidential-data-hub"])
def test_idle_daemon_loads_heavy_libraries_only_at_first_use(daemon: str, tmp_path: Path) -> None:
    """The daemons' real start-up (config, attester detection, the Hub, the ttRPC
    socket), not only their imports: what they load before serving is idle cost."""
    sock = tmp_path / "daemon.sock"
    if daemon == "attestation-agent":
        (tmp_path / "aa.toml").write_text('[token_configs.kbs]\nurl = "http://127.0.0.1:9"\n')
        args = ["attestation.aa.cli:run", "-a", f"unix://{sock}", "-c", str(tmp_path / "aa.toml")]
    else:
        (tmp_path / "cdh.toml").write_text(
            f'socket = "unix://{sock}"\n[aa]\naa_socket = "unix://{tmp_path / "aa.sock"}"\n'
            '[kbc]\nname = "cc_kbc"\nurl = "http://127.0.0.1:9"\n'
            f'[image]\nwork_dir = "{tmp_path / "image"}"\n'
        )
        args = ["cdh.cli:main", "-c", str(tmp_path / "cdh.toml")]
    cp = subprocess.run(
        [sys.executable, "-c", _IDLE_PROBE, str(sock), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr
    loaded = json.loads(cp.stdout)
    assert "coco_rpc.ttrpc" in loaded  # it did get to serving
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in _FIRST_USE_ONLY))
    assert heavy == []
