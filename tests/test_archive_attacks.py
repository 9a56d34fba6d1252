"""Archive extraction under attack: damaged streams, lying headers, link chains, bombs, modes, leftovers.

Every hostile archive is built here with zipfile, tarfile, gzip, lzma and zlib, in a temporary folder.
Each refusal must be one ArchiveError line naming the archive, and leave nothing new in the target:
no marker, no files, no staging folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import json
import logging
import lzma
import os
import random
import signal
import stat
import subprocess
import sys
import tarfile
import time
import types
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsanet.cli import USER_ERRORS, main
from fsanet.config import ExtractConfig, load_config
from fsanet.data import archive
from fsanet.data.archive import (
    ArchiveError,
    ArchiveLimitError,
    UnsafeArchiveError,
    extraction_marker,
    is_extracted,
    safe_extract,
)

MiB = 1 << 20
FIX = "delete it and download it again"


# --------------------------------------------------------------------------------------------
# builders and checks
# --------------------------------------------------------------------------------------------
def random_members(n: int, seed: int, lo: int = 64, hi: int = 512) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"d{i % 3}/m{i:03d}.bin": rng.randbytes(rng.randint(lo, hi)) for i in range(n)}


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr, info.compress_type = 0o100644 << 16, method
            zf.writestr(info, data)
    return buf.getvalue()


def make_zip(path: Path, members: list[tuple[str, bytes, int]], edit: Callable | None = None) -> Path:
    """members: (name, data, unix mode incl. type bits); ``edit(zf)`` may change the infos before the
    central directory is written (that is what readers trust)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr, info.compress_type = mode << 16, zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        if edit is not None:
            edit(zf)
    return path


def make_tar(path: Path, members: list[tuple[str, bytes | None, bytes, str, int]], mode: str = "w") -> Path:
    """members: (name, data or None, tar type, link target, permission bits)."""
    with tarfile.open(path, mode) as tf:
        for name, data, kind, link, perm in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, perm
            info.size = len(data) if data is not None else 0
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tree(target: Path) -> set[str]:
    """Every path under ``target``, hidden ones included."""
    if not target.exists():
        return set()
    return {p.relative_to(target).as_posix() for p in target.rglob("*")}


def files(target: Path) -> dict[str, bytes]:
    """The published files (not the marker), by relative path."""
    return {
        p.relative_to(target).as_posix(): p.read_bytes()
        for p in target.rglob("*")
        if p.is_file() and not p.name.endswith(".extracted.json")
    }


def refused(arc: Path, target: Path, cls: type[ArchiveError] = ArchiveError, **kwargs) -> str:
    """Extract ``arc``, expect ``cls``, and check the message is one line naming the archive, and that
    nothing new is left in the target; return the message."""
    before = tree(target)
    with pytest.raises(cls) as err:
        safe_extract(arc, target, progress=False, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg and str(arc) in msg, msg
    assert isinstance(err.value, USER_ERRORS)  # the CLI prints it as one line, without a traceback
    assert tree(target) == before, tree(target) - before
    return msg


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------------------
# 1. the whole stream is verified before anything is published
# --------------------------------------------------------------------------------------------
FIFTY = random_members(50, seed=1, lo=2000, hi=4000)


def stored_tgz(members: dict[str, bytes]) -> bytearray:
    """A tgz of stored deflate blocks: a flipped byte changes the data, never the deflate structure,
    so only the gzip CRC can notice it."""
    return bytearray(gzip.compress(tar_bytes(members), compresslevel=0, mtime=0))


@pytest.mark.parametrize("where", ["header", "data"])
def test_tgz_with_64_bytes_flipped_mid_stream_is_refused(tmp_path, where):
    raw = stored_tgz(FIFTY)
    pos = raw.find(b"d1/m025.bin") + (100 if where == "header" else 2000)  # header: mode..chksum fields
    for k in range(64):
        raw[pos + k] ^= 0xFF
    arc = tmp_path / "flipped.tgz"
    arc.write_bytes(raw)
    target = tmp_path / "out"
    msg = refused(arc, target)
    assert FIX in msg
    assert not target.exists()  # refused by the scan, before the target was even created


@pytest.mark.parametrize("offset", [-8, -1], ids=["crc", "length"])
def test_flipped_gzip_trailer_is_refused(tmp_path, offset):
    raw = bytearray(gzip.compress(tar_bytes(FIFTY), mtime=0))
    raw[offset] ^= 0x01
    arc = tmp_path / "trailer.tgz"
    arc.write_bytes(raw)
    target = tmp_path / "out"
    target.mkdir()
    assert "CRC" in refused(arc, target) or offset == -1


def test_corrupt_member_found_only_by_the_extraction_leaves_nothing(tmp_path, monkeypatch):
    # the scan passes; the second reading finds a different stream: no file, marker or staging left
    raw = stored_tgz(FIFTY)
    arc = tmp_path / "late.tgz"
    arc.write_bytes(raw)
    real_scan = archive._scan

    def scan_then_damage(*args):
        members = real_scan(*args)
        raw[len(raw) // 2] ^= 0xFF
        arc.write_bytes(raw)
        return members

    monkeypatch.setattr(archive, "_scan", scan_then_damage)
    target = tmp_path / "out"
    (target / "keep").mkdir(parents=True)
    msg = refused(arc, target)
    assert "CRC" in msg


def test_multi_member_gzip_and_zero_padding_are_accepted(tmp_path):
    data = tar_bytes(FIFTY)
    cut = len(data) // 3
    arc = tmp_path / "multi.tgz"
    arc.write_bytes(gzip.compress(data[:cut], mtime=0) + gzip.compress(data[cut:], mtime=0) + bytes(64))
    target = tmp_path / "out"
    safe_extract(arc, target, progress=False)
    assert files(target) == FIFTY


def test_garbage_after_the_gzip_stream_is_refused(tmp_path):
    arc = tmp_path / "tail.tgz"
    arc.write_bytes(gzip.compress(tar_bytes(FIFTY), mtime=0) + b"<html>not part of it</html>")
    refused(arc, tmp_path / "out")


def test_damaged_tar_header_no_longer_ends_the_member_list(tmp_path):
    raw = bytearray(tar_bytes(FIFTY))
    pos = raw.find(b"d1/m025.bin")
    raw[pos + 148 : pos + 156] = b"0000000\0"  # its header checksum
    arc = tmp_path / "plain.tar"
    arc.write_bytes(raw)
    msg = refused(arc, tmp_path / "out")
    assert "header" in msg


def test_concatenated_tar_is_refused(tmp_path):
    # a second archive behind the first one's end blocks would be silently dropped
    arc = tmp_path / "two.tar"
    arc.write_bytes(tar_bytes({"a.txt": b"a"}) + tar_bytes({"b.txt": b"b"}))
    assert "end-of-archive" in refused(arc, tmp_path / "out")


def test_tar_cut_at_a_member_boundary_is_refused(tmp_path):
    raw = tar_bytes(FIFTY)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        cut = tf.getmembers()[30].offset
    arc = tmp_path / "cut.tar"
    arc.write_bytes(raw[:cut])
    assert "end-of-archive" in refused(arc, tmp_path / "out")


def test_zip_member_with_a_bad_crc_is_refused(tmp_path):
    def bad_crc(zf):
        zf.getinfo("b.bin").CRC ^= 1

    arc = make_zip(
        tmp_path / "crc.zip", [("a.bin", b"a" * 100, 0o100644), ("b.bin", b"b" * 100, 0o100644)], bad_crc
    )
    target = tmp_path / "out"
    target.mkdir()
    assert "CRC" in refused(arc, target)


# --------------------------------------------------------------------------------------------
# declared sizes are kept: a member yielding more (or fewer) bytes than its header says is refused
# --------------------------------------------------------------------------------------------
def test_zip_member_longer_than_declared_is_refused(tmp_path):
    data = random.Random(2).randbytes(5000)

    def lie(zf):  # declare the first 100 bytes only, with their CRC: zipfile alone would stop there
        info = zf.getinfo("big.bin")
        info.file_size, info.CRC = 100, zlib.crc32(data[:100])

    arc = make_zip(tmp_path / "long.zip", [("big.bin", data, 0o100644)], lie)
    target = tmp_path / "out"
    target.mkdir()
    assert "more than the 100 bytes" in refused(arc, target)


def test_zip_member_shorter_than_declared_is_refused(tmp_path):
    def lie(zf):
        zf.getinfo("small.bin").file_size = 6000

    arc = make_zip(tmp_path / "short.zip", [("small.bin", b"x" * 5000, 0o100644)], lie)
    target = tmp_path / "out"
    target.mkdir()
    assert "declares 6000" in refused(arc, target)


def test_tar_member_longer_than_declared_is_refused(tmp_path):
    data = random.Random(3).randbytes(10000)
    raw = bytearray(tar_bytes({"a.bin": data, "b.bin": b"b"}))
    info = tarfile.TarInfo("a.bin")
    info.size, info.mode = 10, 0o644
    raw[:512] = info.tobuf(format=tarfile.GNU_FORMAT)  # the header now declares 10 bytes
    arc = tmp_path / "long.tar"
    arc.write_bytes(raw)
    refused(arc, tmp_path / "out")


def test_copy_reads_at_most_one_byte_beyond_the_declared_size():
    class Endless:
        asked = 0

        def read(self, n: int) -> bytes:
            self.asked += n
            return bytes(n)

    src, out = Endless(), []
    with pytest.raises(ArchiveError, match="more than the 1000 bytes"):
        archive._copy_exact(src, out.append, archive.Member("m", "file", size=1000), Path("x.zip"), "zip")
    assert src.asked == 1001 and sum(map(len, out)) <= 1000


# --------------------------------------------------------------------------------------------
# 2. broken archives: one line naming the file, also through the CLI
# --------------------------------------------------------------------------------------------
def corrupt_xz(path: Path) -> Path:
    raw = bytearray(lzma.compress(tar_bytes(FIFTY), format=lzma.FORMAT_XZ))
    for k in range(16):
        raw[len(raw) // 2 + k] ^= 0x5A
    path.write_bytes(raw)
    return path


def encrypted_zip(path: Path) -> Path:
    def encrypt(zf):
        zf.getinfo("secret.txt").flag_bits |= 0x1

    return make_zip(path, [("ok.txt", b"ok", 0o100644), ("secret.txt", b"s" * 50, 0o100644)], encrypt)


def zstd_zip(path: Path) -> Path:
    def method_93(zf):
        zf.getinfo("packed.bin").compress_type = 93

    return make_zip(path, [("packed.bin", b"p" * 50, 0o100644)], method_93)


def zip_file_and_folder(path: Path) -> Path:
    return make_zip(path, [("a", b"file", 0o100644), ("a/b.txt", b"inside", 0o100644)])


def zip_folder_then_file(path: Path) -> Path:
    return make_zip(path, [("a/b.txt", b"inside", 0o100644), ("a", b"file", 0o100644)])


def tgz_file_and_folder(path: Path) -> Path:
    return make_tar(
        path,
        [("a", b"file", tarfile.REGTYPE, "", 0o644), ("a/b.txt", b"in", tarfile.REGTYPE, "", 0o644)],
        "w:gz",
    )


BROKEN = {
    "corrupt.tar.xz": corrupt_xz,
    "encrypted.zip": encrypted_zip,
    "method93.zip": zstd_zip,
    "file_and_folder.zip": zip_file_and_folder,
    "folder_then_file.zip": zip_folder_then_file,
    "file_and_folder.tgz": tgz_file_and_folder,
}
WHY = {
    "corrupt.tar.xz": "corrupt",
    "encrypted.zip": "encrypted",
    "method93.zip": "method 93",
    "file_and_folder.zip": "as a file",
    "folder_then_file.zip": "as a file",
    "file_and_folder.tgz": "as a file",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_archive_is_one_line(tmp_path, name):
    arc = BROKEN[name](tmp_path / name)
    msg = refused(arc, tmp_path / "out")
    assert WHY[name] in msg


def test_broken_archive_through_the_cli_is_one_line(tmp_path, capsys):
    hand = tmp_path / "hand"
    hand.mkdir()
    entries = []
    for name, build in sorted(BROKEN.items()):
        arc = build(hand / name)
        md5 = __import__("hashlib").md5(arc.read_bytes()).hexdigest()
        entries.append(
            {"name": name, "url": f"http://127.0.0.1:9/{name}", "checksum": f"md5:{md5}", "extract_to": name}
        )
    for entry in entries:
        cfg = tmp_path / "broken.yaml"
        cfg.write_text(json.dumps({"data": {"name": "ade20k", "num_classes": 150, "download": [entry]}}))
        argv = [
            "-q",
            "data",
            "download",
            "ade20k",
            "--root",
            str(tmp_path / "data"),
            "--from",
            str(hand),
            "-c",
            str(cfg),
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and entry["name"] in err and "Traceback" not in err, err
        assert tree(tmp_path / "data" / entry["name"]) == set()


# --------------------------------------------------------------------------------------------
# 3. link targets are resolved, through the archive's other links and the links on disk
# --------------------------------------------------------------------------------------------
LINK = stat.S_IFLNK | 0o777


def test_zip_link_chain_is_refused(tmp_path):
    arc = make_zip(
        tmp_path / "chain.zip",
        [("l0", b".", LINK), ("l1", b"l0/..", LINK), ("l2", b"l1/..", LINK), ("esc", b"l2/outside", LINK)],
    )
    target = tmp_path / "data" / "out"
    msg = refused(arc, target, UnsafeArchiveError)
    assert "'l1'" in msg and "outside" in msg and "'l0'" in msg
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["chain.zip"]


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_link_escaping_only_through_an_inside_link_is_refused(tmp_path, fmt):
    # 'd/up' -> '..' is the target itself (fine); 'esc' -> 'd/up/..' reads as 'd' but is the target's parent
    if fmt == "zip":
        arc = make_zip(tmp_path / "via.zip", [("d/up", b"..", LINK), ("esc", b"d/up/..", LINK)])
    else:
        arc = make_tar(
            tmp_path / "via.tgz",
            [("d/up", None, tarfile.SYMTYPE, "..", 0o777), ("esc", None, tarfile.SYMTYPE, "d/up/..", 0o777)],
            "w:gz",
        )
    msg = refused(arc, tmp_path / "out", UnsafeArchiveError)
    assert "'esc'" in msg and "'d/up'" in msg


@pytest.mark.parametrize("disk_link", ["..", "/"], ids=["relative", "absolute"])
def test_link_through_a_link_already_on_disk_is_refused(tmp_path, disk_link):
    target = tmp_path / "out"
    target.mkdir()
    (target / "up").symlink_to(disk_link)  # left by an earlier archive, or made by hand
    arc = make_zip(tmp_path / "disk.zip", [("esc", b"up/secret", LINK)])
    msg = refused(arc, target, UnsafeArchiveError)
    assert "'esc'" in msg and "'up'" in msg


def test_links_that_stay_inside_are_extracted(tmp_path):
    target = tmp_path / "out"
    (target / "real").mkdir(parents=True)
    (target / "real" / "x.txt").write_bytes(b"on disk")
    (target / "alias").symlink_to("real")
    arc = make_zip(
        tmp_path / "fine.zip",
        [
            ("d/f.txt", b"data", 0o100644),
            ("d/up", b"..", LINK),
            ("ok", b"d/up/d/f.txt", LINK),
            ("via_disk", b"alias/x.txt", LINK),
        ],
    )
    safe_extract(arc, target, progress=False)
    assert (target / "ok").read_bytes() == b"data"
    assert (target / "via_disk").read_bytes() == b"on disk"
    for p in target.rglob("*"):
        assert os.path.realpath(p).startswith(str(target.resolve()))


def test_hard_link_must_name_an_earlier_file(tmp_path):
    arc = make_tar(
        tmp_path / "hard.tar",
        [("d/ln", None, tarfile.SYMTYPE, ".", 0o777), ("h", None, tarfile.LNKTYPE, "d/ln", 0o644)],
    )
    assert "does not name a file" in refused(arc, tmp_path / "out", UnsafeArchiveError)


# --------------------------------------------------------------------------------------------
# 4. bombs: ratio, expected total and free disk, each key named and overridable
# --------------------------------------------------------------------------------------------
def deflated_zeros(n_mib: int) -> bytes:
    """A raw deflate stream of ``n_mib`` MiB of zeros, built from one compressed MiB repeated: a
    full flush makes that block independent of what precedes it."""
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = block.compress(bytes(MiB)) + block.flush(zlib.Z_FULL_FLUSH)
    return one * n_mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


BOMB_MIB = 2560  # 2.5 GiB


def zip_bomb(path: Path) -> Path:
    """A ~2.5 MB zip whose one member inflates to 2.5 GiB of zeros. Its CRC is left 0: the member is
    refused on its declared sizes, before a byte of it is inflated."""
    stream = deflated_zeros(BOMB_MIB)

    def relabel(zf):  # stored as is, then declared as what it is: deflated 2.5 GiB
        info = zf.getinfo("zeros.bin")
        info.compress_type, info.file_size, info.CRC = zipfile.ZIP_DEFLATED, BOMB_MIB * MiB, 0

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("zeros.bin", date_time=(1980, 1, 1, 0, 0, 0)), stream)
        relabel(zf)
    return path


def tgz_bomb(path: Path) -> Path:
    """A ~2.6 MB tgz whose one member is 2.5 GiB of zeros (its gzip trailer is never reached)."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = BOMB_MIB * MiB
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = head.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + head.flush(zlib.Z_FULL_FLUSH)
    path.write_bytes(gzip.compress(b"", mtime=0)[:10] + stream + deflated_zeros(BOMB_MIB) + bytes(8))
    return path


@pytest.mark.parametrize("build", [zip_bomb, tgz_bomb], ids=["zip", "tgz"])
def test_bomb_is_refused_before_anything_is_written(tmp_path, build):
    arc = build(tmp_path / ("bomb.zip" if build is zip_bomb else "bomb.tgz"))
    assert arc.stat().st_size < 3_000_000
    start = time.monotonic()
    msg = refused(arc, tmp_path / "out", ArchiveLimitError)
    assert time.monotonic() - start < 5
    assert "data.extract.max_ratio" in msg and "data.extract.ratio_min_bytes" in msg


def small_bomb(path: Path) -> Path:
    """8 MiB of zeros, compressed ~1000-fold (small enough to extract once allowed)."""
    if path.suffix == ".zip":
        return make_zip(path, [("zeros.bin", bytes(8 * MiB), 0o100644)])
    return make_tar(path, [("zeros.bin", bytes(8 * MiB), tarfile.REGTYPE, "", 0o644)], "w:gz")


@pytest.mark.parametrize("suffix", [".zip", ".tgz"])
@pytest.mark.parametrize("override", ["data.extract.max_ratio=5000", "data.extract.ratio_min_bytes=16777216"])
def test_ratio_limit_names_its_keys_and_the_override_lets_the_archive_through(tmp_path, suffix, override):
    arc = small_bomb(tmp_path / f"zeros{suffix}")
    target = tmp_path / "out"
    msg = refused(arc, target, ArchiveLimitError, limits=load_config().data.extract)
    assert override.split("=")[0] in msg
    safe_extract(arc, target, progress=False, limits=load_config(overrides=[override]).data.extract)
    assert (target / "zeros.bin").stat().st_size == 8 * MiB


def test_expected_size_names_its_keys_and_the_override_lets_the_archive_through(tmp_path):
    arc = make_zip(tmp_path / "two.zip", [("a.bin", b"a" * 1000, 0o100644), ("b.bin", b"b" * 1000, 0o100644)])
    params = tmp_path / "set.yaml"
    params.write_text(json.dumps({"data": {"download": [{"name": "two.zip", "unpacked_bytes": 1900}]}}))
    cfg = load_config([params])
    target = tmp_path / "out"
    msg = refused(
        arc,
        target,
        ArchiveLimitError,
        limits=cfg.data.extract,
        unpacked_bytes=cfg.data.download[0].unpacked_bytes,
    )
    assert "data.download[].unpacked_bytes = 1900" in msg and "data.extract.size_margin" in msg
    cfg = load_config([params], ["data.extract.size_margin=0.1"])
    safe_extract(
        arc,
        target,
        progress=False,
        limits=cfg.data.extract,
        unpacked_bytes=cfg.data.download[0].unpacked_bytes,
    )
    assert files(target) == {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000}


def test_free_disk_check_names_its_keys_and_the_override_lets_the_archive_through(tmp_path, monkeypatch):
    arc = make_zip(tmp_path / "a.zip", [("a.bin", b"a" * 10_000, 0o100644)])
    monkeypatch.setattr(archive.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=20_000))
    target = tmp_path / "out"
    msg = refused(arc, target, ArchiveLimitError)
    assert "data.extract.min_free_bytes" in msg and "data.extract.free_margin" in msg and str(target) in msg
    limits = load_config(overrides=["data.extract.min_free_bytes=0"]).data.extract
    safe_extract(arc, target, progress=False, limits=limits)
    assert files(target) == {"a.bin": b"a" * 10_000}


def test_real_datasets_pass_the_default_limits():
    # image archives are ~1:1; a 50 MiB JSON compressed 20-fold is well inside the default ratio
    limits = ExtractConfig()
    assert 20 < limits.max_ratio and limits.ratio_min_bytes >= MiB
    budget = archive._Budget.__new__(archive._Budget)
    budget.limits = limits
    assert not budget._too_compressed(50 * MiB, 50 * MiB // 20)
    assert not budget._too_compressed(900 * 1024, 900)  # a small, very compressible list
    assert budget._too_compressed(2560 * MiB, 2560 * 1024)


# --------------------------------------------------------------------------------------------
# 5. permissions: the archive's bits less the umask, never writable by others
# --------------------------------------------------------------------------------------------
def world_writable(target: Path) -> list[str]:
    paths = [target, *target.rglob("*")]
    return [str(p) for p in paths if not p.is_symlink() and p.stat().st_mode & stat.S_IWOTH]


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_modes_follow_the_umask_and_are_never_world_writable(tmp_path, mask, fmt):
    if fmt == "zip":
        arc = make_zip(
            tmp_path / "modes.zip",
            [
                ("x/", b"", stat.S_IFDIR | 0o777),
                ("x/run.sh", b"#!", 0o100777),
                ("x/data.bin", b"d", 0o100666),
                ("ro.txt", b"r", 0o100444),
                ("suid", b"s", 0o104777),
            ],
        )
    else:
        arc = make_tar(
            tmp_path / "modes.tgz",
            [
                ("x", None, tarfile.DIRTYPE, "", 0o777),
                ("x/run.sh", b"#!", tarfile.REGTYPE, "", 0o777),
                ("x/data.bin", b"d", tarfile.REGTYPE, "", 0o666),
                ("ro.txt", b"r", tarfile.REGTYPE, "", 0o444),
                ("suid", b"s", tarfile.REGTYPE, "", 0o4777),
            ],
            "w:gz",
        )
    target = tmp_path / "new" / "out"
    with umask(mask):
        safe_extract(arc, target, progress=False)

    def mode(rel: str) -> int:
        return stat.S_IMODE((target / rel).stat().st_mode)

    assert world_writable(tmp_path / "new") == []
    assert mode("x") == 0o775 & ~mask
    assert mode("x/run.sh") == 0o775 & ~mask
    assert mode("x/data.bin") == 0o664 & ~mask
    assert mode("ro.txt") == 0o644 & ~mask
    assert mode("suid") == 0o775 & ~mask  # no set-id bit either
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o775 & ~mask


# --------------------------------------------------------------------------------------------
# 6. staging folders of killed extractions are removed by the next run, live ones are not
# --------------------------------------------------------------------------------------------
def test_stale_staging_folder_is_removed_with_a_log_line(tmp_path, caplog):
    arc = make_zip(tmp_path / "X.zip", [("a.txt", b"A", 0o100644)])
    target = tmp_path / "out"
    stale = target / ".X.zip.extracting-k2j4h5g6"  # the name an earlier version gave its staging folder
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "part.bin").write_bytes(bytes(MiB))
    other = target / ".Y.zip.extracting-1234-abcdefgh"  # another archive's: not ours to judge
    other.mkdir()
    caplog.set_level(logging.INFO, logger="fsanet.data.archive")
    safe_extract(arc, target, progress=False)
    assert not stale.exists() and other.exists()
    assert any(stale.name in r.getMessage() and "1.0 MiB" in r.getMessage() for r in caplog.records)
    # after a successful run too: the rerun that finds the marker still removes a leftover
    (target / ".X.zip.extracting-99-zzzzzzzz").mkdir()
    caplog.clear()
    safe_extract(arc, target, progress=False)
    assert sorted(p.name for p in target.iterdir()) == [
        ".X.zip.extracted.json",
        ".Y.zip.extracting-1234-abcdefgh",
        "a.txt",
    ]
    assert any("removed" in r.getMessage() and "zzzzzzzz" in r.getMessage() for r in caplog.records)


def test_staging_folder_of_a_live_extraction_is_kept_until_it_is_killed(tmp_path, caplog):
    arc = make_zip(tmp_path / "X.zip", [("big.bin", random.Random(4).randbytes(MiB), 0o100644)])
    target, ready = tmp_path / "out", tmp_path / "ready"
    child = (
        "import pathlib, sys, time\n"
        "from fsanet.data import archive\n"
        "def hang(src, dst):\n    pathlib.Path(sys.argv[3]).write_text('staged')\n"
        "    time.sleep(120)\narchive._merge = hang\n"
        "archive.safe_extract(sys.argv[1], sys.argv[2], progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child, str(arc), str(target), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the child extraction did not start"
            time.sleep(0.05)
        (live,) = target.glob(".X.zip.extracting-*")
        assert live.name.startswith(f".X.zip.extracting-{proc.pid}-")
        caplog.set_level(logging.INFO, logger="fsanet.data.archive")
        safe_extract(arc, target, progress=False)  # a concurrent extraction of the same archive
        assert live.is_dir() and (live / "big.bin").stat().st_size == MiB
        assert any("in use" in r.getMessage() for r in caplog.records)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    caplog.clear()
    safe_extract(arc, target, progress=False)
    assert not live.exists()
    assert any("removed" in r.getMessage() and live.name in r.getMessage() for r in caplog.records)
    assert is_extracted(arc, target)


def test_held_staging_folder_is_kept(tmp_path):
    # the lock is what counts, not the name: hold one on a staging folder as a live extraction does
    arc = make_zip(tmp_path / "X.zip", [("a.txt", b"A", 0o100644)])
    target = tmp_path / "out"
    live = target / ".X.zip.extracting-1-held"
    live.mkdir(parents=True)
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        safe_extract(arc, target, progress=False)
        assert live.is_dir()
    finally:
        os.close(fd)
    (target / "a.txt").unlink()
    extraction_marker(arc, target).unlink()
    safe_extract(arc, target, progress=False)
    assert not live.exists()


# --------------------------------------------------------------------------------------------
# 7. property: a flipped byte never publishes anything partial
# --------------------------------------------------------------------------------------------
PROP_MEMBERS = random_members(20, seed=7, lo=16, hi=200)
PROP_TGZ = gzip.compress(tar_bytes(PROP_MEMBERS), mtime=0)
PROP_ZIP = zip_bytes(PROP_MEMBERS)


def check_flip(root: Path, name: str, data: bytes, pos: int, xor: int) -> None:
    flipped = bytearray(data)
    flipped[pos] ^= xor
    arc = root / name
    arc.write_bytes(flipped)
    target = root / "out"
    target.mkdir()
    (target / "keep.txt").write_bytes(b"mine")
    try:
        safe_extract(arc, target, progress=False)
    except ArchiveError as err:
        assert "\n" not in str(err) and str(arc) in str(err)
        assert tree(target) == {"keep.txt"}  # no marker, no files, no staging folder
        return
    assert files(target) == {**PROP_MEMBERS, "keep.txt": b"mine"}
    assert extraction_marker(arc, target).is_file()


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(pos=st.integers(0, len(PROP_TGZ) - 1), xor=st.integers(1, 255))
def test_flipped_byte_in_a_tgz_publishes_nothing_partial(tmp_path_factory, pos, xor):
    check_flip(tmp_path_factory.mktemp("tgz"), "flip.tgz", PROP_TGZ, pos, xor)


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(pos=st.integers(0, len(PROP_ZIP) - 1), xor=st.integers(1, 255))
def test_flipped_byte_in_a_zip_publishes_nothing_partial(tmp_path_factory, pos, xor):
    check_flip(tmp_path_factory.mktemp("zip"), "flip.zip", PROP_ZIP, pos, xor)
