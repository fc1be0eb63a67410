"""SecureMount block-device with a recording command runner.

device-mapper does not exist in this kernel, so ``cryptsetup``/``mount`` are
replaced by a recorder that answers like the tools would (and can fail at a
chosen step); the real dm-crypt path runs in the VM tests. Everything else
(header files, symlinks, mount-point dirs, sysfs lookup) is real, in tmp_path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from cdh.errors import SecureMountError
from cdh.secure_mount import (
    EPHEMERAL_KEY_BYTES,
    HEADER_SIZE,
    CommandResult,
    SecureMounter,
    SubprocessRunner,
    emptydir_request_options,
    trusted_storage_request_options,
)

MKFS_DRY = b"""mke2fs 1.47.0 (5-Feb-2023)
Creating filesystem with 262144 4k blocks and 65536 inodes
Filesystem UUID: 0b3f
Superblock backups stored on blocks:
\t32768, 98304, 163840, 229376

"""


class Recorder:
    def __init__(self, fail_on: str | None = None, is_luks: bool = False, dry: bytes = MKFS_DRY) -> None:
        self.dry = dry
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.fail_on = fail_on
        self.is_luks = is_luks
        self.open_mappings: set[str] = set()
        self.mounted: set[str] = set()

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandResult:
        argv = list(argv)
        self.calls.append((argv, stdin))
        joined = " ".join(argv)
        if self.fail_on and self.fail_on in joined:
            return CommandResult(1, b"", b"simulated failure\n")
        if argv[:2] == ["cryptsetup", "isLuks"]:
            return CommandResult(0 if self.is_luks else 1)
        if argv[:2] == ["cryptsetup", "luksOpen"]:
            self.open_mappings.add(argv[-1])
        if argv[:2] == ["cryptsetup", "luksClose"]:
            self.open_mappings.discard(argv[-1])
        if argv[0] == "mount":
            self.mounted.add(argv[-1])
        if argv[0] == "umount":
            self.mounted.discard(argv[-1])
        if argv[0] == "mkfs.ext4" and "-n" in argv:
            return CommandResult(0, self.dry)
        return CommandResult(0)

    def argvs(self) -> list[list[str]]:
        return [a for a, _ in self.calls]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("headers", "mapper", "sys", "dev", "mnt")}
    d["mapper"].mkdir()
    d["dev"].mkdir()
    (d["dev"] / "vdb").write_bytes(b"")
    (d["sys"] / "254:16").mkdir(parents=True)
    (d["sys"] / "254:16" / "uevent").write_text("MAJOR=254\nMINOR=16\nDEVNAME=vdb\nDEVTYPE=disk\n")
    return d


def mounter(env: dict[str, Path], rec: Recorder, resources: dict[str, bytes] | None = None) -> SecureMounter:
    async def get(uri: str) -> bytes:
        return (resources or {})[uri]

    async def unseal(s: str) -> bytes:
        return b"unsealed-key" if s.startswith("sealed.") else b""

    return SecureMounter(
        runner=rec,
        get_resource=get,
        unseal=unseal,
        header_dir=env["headers"],
        mapper_dir=env["mapper"],
        sysfs_dev_block=env["sys"],
        dev_dir=env["dev"],
    )


async def test_empty_filesystem_with_integrity_exact_sequence(env: dict[str, Path]) -> None:
    rec = Recorder()
    m = mounter(env, rec)
    opts = trusted_storage_request_options("254:16") | {"mapperName": "trusted"}
    mp = env["mnt"] / "image"
    await m.secure_mount("block-device", opts, str(mp))
    dev = str(env["dev"] / "vdb")
    hdr = m.header_path(Path(dev))
    mapper = str(env["mapper"] / "trusted")
    assert hdr.parent == env["headers"] and hdr.stat().st_size == HEADER_SIZE
    assert oct(hdr.stat().st_mode & 0o777) == "0o600"
    assert rec.argvs() == [
        ["cryptsetup", "isLuks", dev],
        [
            "cryptsetup",
            "--batch-mode",
            "luksFormat",
            "--type",
            "luks2",
            "--cipher",
            "aes-xts-plain64",
            "--sector-size",
            "4096",
            "--header",
            str(hdr),
            "--integrity",
            "hmac-sha256",
            "--integrity-no-wipe",
            "--integrity-no-journal",
            dev,
            "-",
        ],
        ["cryptsetup", "luksOpen", "--header", str(hdr), "-d", "-", dev, "trusted"],
        ["mkfs.ext4", mapper, "-F", "-n", "-E", "lazy_journal_init"],
        *[
            ["dd", "if=/dev/zero", f"of={mapper}", "bs=4k", "count=1", "oflag=direct", f"seek={b}"]
            for b in (0, 32768, 98304, 163840, 229376)
        ],
        ["mkfs.ext4", mapper, "-F", "-E", "lazy_journal_init", "-E", "lazy_itable_init=0"],
        ["mount", "-t", "ext4", "-o", "noatime", mapper, str(mp)],
    ]
    # the key: ephemeral random, same bytes on stdin for format and open, never in argv
    fmt_key, open_key = rec.calls[1][1], rec.calls[2][1]
    assert fmt_key is not None and len(fmt_key) == EPHEMERAL_KEY_BYTES and fmt_key == open_key
    assert all(stdin is None for _, stdin in rec.calls[3:])
    for argv, _ in rec.calls:
        assert not any(fmt_key[:16].hex() in a or len(a) > 400 for a in argv)
    assert not any(fmt_key in p.read_bytes() for p in env["headers"].iterdir())
    assert mp.is_dir() and rec.mounted == {str(mp)}


async def test_caller_lazy_itable_init_is_kept(env: dict[str, Path]) -> None:
    rec = Recorder()
    opts = {
        **trusted_storage_request_options("254:16"),
        "mkfsOpts": "-E lazy_itable_init=1",
        "mapperName": "m",
    }
    await mounter(env, rec).secure_mount("block-device", opts, str(env["mnt"] / "x"))
    final = next(a for a in rec.argvs() if a[0] == "mkfs.ext4" and "-n" not in a)
    assert final[3:] == ["-E", "lazy_itable_init=1"]


async def test_emptydir_without_integrity(env: dict[str, Path]) -> None:
    rec = Recorder()
    opts = emptydir_request_options("254:16", integrity=False) | {"mapperName": "ed"}
    await mounter(env, rec).secure_mount("block-device", opts, str(env["mnt"] / "ed"))
    argvs = rec.argvs()
    assert "--integrity" not in argvs[1]
    assert not any(a[0] == "dd" for a in argvs)
    assert [
        "mkfs.ext4",
        str(env["mapper"] / "ed"),
        "-F",
        "-O",
        "^has_journal",
        "-m",
        "0",
        "-i",
        "163840",
        "-I",
        "128",
    ] in argvs


async def test_device_target_with_kbs_key(env: dict[str, Path]) -> None:
    rec = Recorder()
    opts = {
        "devicePath": str(env["dev"] / "vdb"),
        "sourceType": "encrypted",
        "encryptionType": "luks2",
        "targetType": "device",
        "key": "kbs:///default/disk/key",
        "mapperName": "data",
    }
    link = env["mnt"] / "data-dev"
    await mounter(env, rec, {"kbs:///default/disk/key": b"K" * 64}).secure_mount(
        "block-device", opts, str(link)
    )
    assert rec.argvs() == [["cryptsetup", "luksOpen", "-d", "-", str(env["dev"] / "vdb"), "data"]]
    assert rec.calls[0][1] == b"K" * 64
    assert link.is_symlink() and os.readlink(link) == str(env["mapper"] / "data")
    assert not env["headers"].exists()  # no detached header for an encrypted source


async def test_encrypted_filesystem_sealed_and_file_keys(env: dict[str, Path], tmp_path: Path) -> None:
    rec = Recorder()
    base = {
        "devicePath": str(env["dev"] / "vdb"),
        "sourceType": "encrypted",
        "encryptionType": "luks2",
        "targetType": "fileSystem",
    }
    await mounter(env, rec).secure_mount(
        "block-device", base | {"key": "sealed.x.y.z", "mapperName": "a"}, str(env["mnt"] / "a")
    )
    assert rec.calls[0][1] == b"unsealed-key"
    assert not any(a[0].startswith("mkfs") for a in rec.argvs())  # existing fs is mounted as is
    kf = tmp_path / "keyfile"
    kf.write_bytes(b"file-key")
    rec2 = Recorder()
    await mounter(env, rec2).secure_mount(
        "block-device", base | {"key": f"file://{kf}", "mapperName": "b"}, str(env["mnt"] / "b")
    )
    assert rec2.calls[0][1] == b"file-key"


@pytest.mark.parametrize("step", ["luksFormat", "luksOpen", "mkfs.ext4 ", "seek=98304", "mount"])
async def test_failure_half_way_rolls_back(env: dict[str, Path], step: str) -> None:
    rec = Recorder(fail_on=step)
    m = mounter(env, rec)
    mp = env["mnt"] / "image"
    opts = trusted_storage_request_options("254:16") | {"mapperName": "t"}
    with pytest.raises(SecureMountError, match="failed: simulated failure"):
        await m.secure_mount("block-device", opts, str(mp))
    assert rec.open_mappings == set() and rec.mounted == set()
    assert list(env["headers"].iterdir()) == []  # detached header removed
    assert not mp.exists()  # mount point we created is gone
    if step not in ("luksFormat", "luksOpen"):
        assert ["cryptsetup", "luksClose", "t"] in rec.argvs()
    # and a retry from scratch works (nothing left behind blocks it)
    rec2 = Recorder()
    await mounter(env, rec2).secure_mount("block-device", opts, str(mp))
    assert rec2.mounted == {str(mp)}


async def test_rollback_reports_a_mapping_it_could_not_close(
    env: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    class StuckClose(Recorder):
        async def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandResult:
            if list(argv[:2]) == ["cryptsetup", "luksClose"]:
                self.calls.append((list(argv), stdin))
                return CommandResult(5, b"", b"Device t is still in use.\n")
            return await super().run(argv, stdin=stdin)

    rec = StuckClose(fail_on="mount")
    opts = trusted_storage_request_options("254:16") | {"mapperName": "t"}
    with pytest.raises(SecureMountError, match="mount failed"):
        await mounter(env, rec).secure_mount("block-device", opts, str(env["mnt"] / "image"))
    assert ["cryptsetup", "luksClose", "t"] in rec.argvs()
    # the mapping is still open: that must not pass silently
    assert "close mapping" in caplog.text and "still in use" in caplog.text
    assert list(env["headers"].iterdir()) == []  # the other steps were still undone


async def test_already_formatted_refused(env: dict[str, Path]) -> None:
    opts = trusted_storage_request_options("254:16") | {"mapperName": "t"}
    rec = Recorder(is_luks=True)
    with pytest.raises(SecureMountError, match="already holds a LUKS header"):
        await mounter(env, rec).secure_mount("block-device", opts, str(env["mnt"] / "x"))
    assert [a[1] for a in rec.argvs()] == ["isLuks"]
    # a detached header already exists for this device: formatted before, refuse
    rec = Recorder()
    m = mounter(env, rec)
    await m.secure_mount("block-device", opts, str(env["mnt"] / "x"))
    rec2 = Recorder()
    with pytest.raises(SecureMountError, match="already"):
        await mounter(env, rec2).secure_mount(
            "block-device", opts | {"mapperName": "t2"}, str(env["mnt"] / "y")
        )
    assert not any("luksFormat" in a for a in rec2.argvs())
    assert m.header_path(env["dev"] / "vdb").stat().st_size == HEADER_SIZE  # the first header is untouched


@pytest.mark.parametrize(
    ("opts", "msg"),
    [
        (
            {"sourceType": "empty", "encryptionType": "luks2", "targetType": "device"},
            "deviceId or devicePath",
        ),
        (
            {"deviceId": "254:16", "sourceType": "x", "encryptionType": "luks2", "targetType": "device"},
            "sourceType",
        ),
        (
            {"deviceId": "254:16", "sourceType": "empty", "encryptionType": "zfs", "targetType": "device"},
            "zfs",
        ),
        ({"deviceId": "254:16", "sourceType": "empty", "encryptionType": "luks2"}, "targetType"),
        (
            {"deviceId": "254", "sourceType": "empty", "encryptionType": "luks2", "targetType": "device"},
            "MAJ:MIN",
        ),
        (
            {"deviceId": "1:2", "sourceType": "empty", "encryptionType": "luks2", "targetType": "device"},
            "no block",
        ),
        (
            {
                "devicePath": "/nonexistent/dev",
                "sourceType": "empty",
                "encryptionType": "luks2",
                "targetType": "device",
            },
            "does not exist",
        ),
        (
            {
                "deviceId": "254:16",
                "sourceType": "empty",
                "encryptionType": "luks2",
                "targetType": "device",
                "mapperName": "../x",
            },
            "mapperName",
        ),
        (
            {
                "deviceId": "254:16",
                "sourceType": "empty",
                "encryptionType": "luks2",
                "targetType": "device",
                "key": "http://evil/key",
            },
            "key must be",
        ),
        (
            {
                "deviceId": "254:16",
                "sourceType": "empty",
                "encryptionType": "luks2",
                "targetType": "device",
                "bogus": "1",
            },
            "unknown",
        ),
        (
            {
                "deviceId": "254:16",
                "sourceType": "empty",
                "encryptionType": "luks2",
                "targetType": "device",
                "dataIntegrity": "yes",
            },
            "dataIntegrity",
        ),
    ],
)
async def test_bad_requests(env: dict[str, Path], opts: dict[str, str], msg: str) -> None:
    rec = Recorder()
    with pytest.raises(SecureMountError, match=msg):
        await mounter(env, rec).secure_mount("block-device", opts, str(env["mnt"] / "x"))
    assert not any(a[1] in ("luksFormat", "luksOpen") for a in rec.argvs() if a[0] == "cryptsetup")


async def test_bad_volume_type_and_mount_point(env: dict[str, Path]) -> None:
    m = mounter(env, Recorder())
    with pytest.raises(SecureMountError, match="volume_type"):
        await m.secure_mount("alibaba-cloud-oss", {}, "/x")
    with pytest.raises(SecureMountError, match="absolute"):
        await m.secure_mount("block-device", trusted_storage_request_options("254:16"), "rel/x")


async def test_zeroing_follows_mke2fs_block_size(env: dict[str, Path]) -> None:
    dry = b"Creating filesystem with 65536 1k blocks and 16384 inodes\nSuperblock backups stored on blocks:\n\t8193, 24577\n"
    rec = Recorder(dry=dry)
    opts = trusted_storage_request_options("254:16") | {"mapperName": "small"}
    await mounter(env, rec).secure_mount("block-device", opts, str(env["mnt"] / "s"))
    dds = [a for a in rec.argvs() if a[0] == "dd"]
    assert [(a[3], a[-1]) for a in dds] == [
        ("bs=1k", "seek=0"),
        ("bs=1k", "seek=8193"),
        ("bs=1k", "seek=24577"),
    ]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="cryptsetup is not installed")
async def test_real_cryptsetup_format_then_rollback(env: dict[str, Path], tmp_path: Path) -> None:
    """Real cryptsetup on a file: luksFormat with the detached header and the key
    on stdin works; the key opens the header (--test-passphrase); luksOpen then
    fails here (no device-mapper in this kernel) or succeeds (a kernel with
    dm-crypt) — either way the outcome is consistent and nothing is left behind
    on failure."""
    real = SubprocessRunner(timeout=120)
    data = tmp_path / "disk.img"
    with data.open("wb") as f:
        f.truncate(64 << 20)
    checks: dict[str, int] = {}

    class Spy:
        async def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandResult:
            if argv[:2] == ["cryptsetup", "luksOpen"]:
                hdr = argv[argv.index("--header") + 1]
                assert stdin is not None
                t = await real.run(
                    ["cryptsetup", "luksOpen", "--test-passphrase", "--header", hdr, "-d", "-", str(data)],
                    stdin=stdin,
                )
                checks["right key"] = t.returncode
                t = await real.run(
                    ["cryptsetup", "luksOpen", "--test-passphrase", "--header", hdr, "-d", "-", str(data)],
                    stdin=b"wrong key",
                )
                checks["wrong key"] = t.returncode
                checks["isLuks header"] = (await real.run(["cryptsetup", "isLuks", hdr])).returncode
            return await real.run(argv, stdin=stdin)

    m = SecureMounter(runner=Spy(), header_dir=env["headers"], mapper_dir=env["mapper"])
    opts = {
        "devicePath": str(data),
        "sourceType": "empty",
        "encryptionType": "luks2",
        "targetType": "device",
        "mapperName": "cdhtest",
    }
    link = tmp_path / "dev-link"
    try:
        await m.secure_mount("block-device", opts, str(link))
    except SecureMountError as exc:
        assert "luksOpen failed" in str(exc)
        assert list(env["headers"].iterdir()) == [] and not link.exists()
    else:  # a kernel with dm-crypt: close what we opened
        await real.run(["cryptsetup", "luksClose", "cdhtest"])
    assert checks == {"right key": 0, "wrong key": 2, "isLuks header": 0}
    assert (await real.run(["cryptsetup", "isLuks", str(data)])).returncode != 0  # header is detached


async def test_cancelled_mid_luks_open_closes_what_it_opened(env: dict[str, Path]) -> None:
    """The RPC deadline (or a caller that hangs up) cancels the handler while
    cryptsetup runs: a mapping luksOpen created by then is closed, the header goes."""

    class SlowOpen(Recorder):
        async def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandResult:
            if list(argv[:2]) == ["cryptsetup", "luksOpen"]:
                self.calls.append((list(argv), stdin))
                (env["mapper"] / argv[-1]).touch()  # the device node appears...
                self.open_mappings.add(argv[-1])
                await asyncio.Event().wait()  # ...and cryptsetup has not returned yet
            if list(argv[:2]) == ["cryptsetup", "luksClose"]:
                (env["mapper"] / argv[-1]).unlink()
            return await super().run(argv, stdin=stdin)

    rec = SlowOpen()
    opts = trusted_storage_request_options("254:16") | {"mapperName": "t"}
    task = asyncio.create_task(mounter(env, rec).secure_mount("block-device", opts, str(env["mnt"] / "i")))
    while not rec.open_mappings:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.open_mappings == set() and ["cryptsetup", "luksClose", "t"] in rec.argvs()
    assert list(env["headers"].iterdir()) == [] and not (env["mnt"] / "i").exists()


async def test_subprocess_runner_kills_its_child_when_cancelled(tmp_path: Path) -> None:
    """Otherwise a cancelled luksOpen/mount would finish after the rollback ran."""
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(
        SubprocessRunner().run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], stdin=b"k")
    )
    for _ in range(3000):  # up to 30 s on a loaded box
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.01)
    pid = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


@pytest.mark.parametrize("devname", ["/etc/passwd", "../etc/passwd", "vdb\x00", ""])
async def test_devname_stays_under_dev(env: dict[str, Path], devname: str) -> None:
    (env["sys"] / "254:17").mkdir()
    (env["sys"] / "254:17" / "uevent").write_text(f"MAJOR=254\nMINOR=17\nDEVNAME={devname}\n")
    rec = Recorder()
    opts = trusted_storage_request_options("254:17") | {"mapperName": "d"}
    with pytest.raises(SecureMountError, match="DEVNAME"):
        await mounter(env, rec).secure_mount("block-device", opts, str(env["mnt"] / "d"))
    assert rec.calls == []


async def test_cancelled_mid_mount_unmounts(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """mount(2) may complete although the mount tool was killed: the rollback
    unmounts before it closes the mapping (which a mounted fs would keep busy)."""

    class SlowMount(Recorder):
        async def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandResult:
            res = await super().run(argv, stdin=stdin)
            if argv[0] == "mount":
                await asyncio.Event().wait()  # the kernel mounted; the tool has not returned
            return res

    rec = SlowMount()
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) in rec.mounted)
    mp = env["mnt"] / "i"
    opts = trusted_storage_request_options("254:16") | {"mapperName": "t"}
    task = asyncio.create_task(mounter(env, rec).secure_mount("block-device", opts, str(mp)))
    while not rec.mounted:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.mounted == set() and rec.open_mappings == set()
    tail = [a[:2] for a in rec.argvs()[-2:]]
    assert tail == [["umount", str(mp)], ["cryptsetup", "luksClose"]]
    assert not mp.exists() and list(env["headers"].iterdir()) == []


async def test_failed_mount_leaves_an_earlier_mount_alone(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = env["mnt"] / "busy"
    mp.mkdir(parents=True)
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(mp))  # mounted before we came
    rec = Recorder(fail_on="mount -t")
    opts = trusted_storage_request_options("254:16") | {"mapperName": "t"}
    with pytest.raises(SecureMountError, match="mount failed"):
        await mounter(env, rec).secure_mount("block-device", opts, str(mp))
    assert not any(a[0] == "umount" for a in rec.argvs()) and mp.is_dir()
    assert rec.open_mappings == set()
