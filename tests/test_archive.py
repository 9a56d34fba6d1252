"""Safe, atomic archive extraction: malicious members are refused by name and nothing escapes the target."""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsanet.data import archive
from fsanet.data.archive import (
    ArchiveError,
    Member,
    UnsafeArchiveError,
    check_members,
    extraction_marker,
    is_extracted,
    safe_extract,
)


# --------------------------------------------------------------------------------------------
# archive builders
# --------------------------------------------------------------------------------------------
def make_zip(path: Path, members: list[tuple[str, bytes | None, int]]) -> Path:
    """members: (name, data or None for a directory, unix mode incl. type bits)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            zf.writestr(info, data or b"")
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def tar_info(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def outside_files(tmp_path: Path, target: Path) -> set[str]:
    """Every path under tmp_path that is not under target and not an input archive."""
    found = set()
    for p in tmp_path.rglob("*"):
        if target in p.parents or p == target or p.suffix in (".zip", ".tar", ".tgz", ".gz"):
            continue
        found.add(p.relative_to(tmp_path).as_posix())
    return found


# --------------------------------------------------------------------------------------------
# good archives
# --------------------------------------------------------------------------------------------
def test_zip_extracts_with_marker_and_rerun_skips(tmp_path):
    arc = make_zip(
        tmp_path / "good.zip",
        [
            ("top/", None, 0o40755),
            ("top/a.txt", b"alpha", 0o100644),
            ("top/sub/b.bin", b"\x00\x01", 0o100600),
            ("README", b"readme", 0o100644),
        ],
    )
    target = tmp_path / "out"
    assert safe_extract(arc, target, digest="md5:x", progress=False) == target
    assert (target / "top" / "a.txt").read_bytes() == b"alpha"
    assert (target / "top" / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert (target / "README").read_bytes() == b"readme"
    assert is_extracted(arc, target, "md5:x") and not is_extracted(arc, target, "md5:y")
    # no staging folder left behind
    assert sorted(p.name for p in target.iterdir()) == [".good.zip.extracted.json", "README", "top"]
    # a rerun with the same digest does not touch the files
    (target / "top" / "a.txt").write_bytes(b"edited")
    safe_extract(arc, target, digest="md5:x", progress=False)
    assert (target / "top" / "a.txt").read_bytes() == b"edited"
    # another digest means another archive: extracted again
    safe_extract(arc, target, digest="md5:y", progress=False)
    assert (target / "top" / "a.txt").read_bytes() == b"alpha"


def test_two_archives_merge_into_one_target(tmp_path):
    a = make_zip(tmp_path / "a.zip", [("gtFine/x.png", b"1", 0o100644), ("license.txt", b"L", 0o100644)])
    b = make_zip(tmp_path / "b.zip", [("leftImg8bit/y.png", b"2", 0o100644), ("license.txt", b"L", 0o100644)])
    target = tmp_path / "cityscapes"
    safe_extract(a, target, progress=False)
    safe_extract(b, target, progress=False)
    assert (target / "gtFine" / "x.png").read_bytes() == b"1"
    assert (target / "leftImg8bit" / "y.png").read_bytes() == b"2"
    assert (target / "license.txt").read_bytes() == b"L"


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tgz")])
def test_tar_extracts_dirs_files_and_inside_links(tmp_path, mode, suffix):
    arc = make_tar(
        tmp_path / f"good{suffix}",
        [
            tar_info("d", tarfile.DIRTYPE),
            ("d/f.txt", b"data"),
            tar_info("d/rel", tarfile.SYMTYPE, "f.txt"),
            tar_info("d/hard", tarfile.LNKTYPE, "d/f.txt"),
        ],
        mode,
    )
    target = tmp_path / "out"
    safe_extract(arc, target, progress=False)
    assert (target / "d" / "f.txt").read_bytes() == b"data"
    assert os.readlink(target / "d" / "rel") == "f.txt"
    assert (target / "d" / "hard").read_bytes() == b"data"
    assert extraction_marker(arc, target).is_file()


def test_zip_symlink_inside_target_is_kept(tmp_path):
    arc = make_zip(tmp_path / "ln.zip", [("a/f", b"x", 0o100644), ("a/ln", b"f", stat.S_IFLNK | 0o777)])
    target = tmp_path / "out"
    safe_extract(arc, target, progress=False)
    assert os.readlink(target / "a" / "ln") == "f"
    assert (target / "a" / "ln").read_bytes() == b"x"


# --------------------------------------------------------------------------------------------
# malicious archives: refused, the member named, nothing written (inside or outside the target)
# --------------------------------------------------------------------------------------------
ZIP_ATTACKS = {
    "traversal": (
        [("ok.txt", b"fine", 0o100644), ("../evil.txt", b"pwned", 0o100644)],
        "../evil.txt",
        "'..'",
    ),
    "nested traversal": ([("a/../../evil.txt", b"pwned", 0o100644)], "a/../../evil.txt", "'..'"),
    "absolute": ([("/tmp/fsanet-evil.txt", b"pwned", 0o100644)], "/tmp/fsanet-evil.txt", "absolute"),
    "symlink escape": ([("ln", b"../../etc", stat.S_IFLNK | 0o777)], "ln", "outside"),
    "symlink absolute": ([("ln", b"/etc/passwd", stat.S_IFLNK | 0o777)], "ln", "absolute"),
    "backslash": ([("..\\evil.txt", b"pwned", 0o100644)], "..\\evil.txt", "backslash"),
    "fifo": ([("pipe", b"", stat.S_IFIFO | 0o644)], "pipe", "FIFO"),
}


@pytest.mark.parametrize("case", sorted(ZIP_ATTACKS))
def test_malicious_zip_refused(tmp_path, case):
    members, bad, why = ZIP_ATTACKS[case]
    arc = make_zip(tmp_path / "evil.zip", members)
    target = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(arc, target, progress=False)
    msg = str(err.value)
    assert f"'{bad}'" in msg and why in msg and "evil.zip" in msg
    assert not target.exists()  # nothing was extracted, not even the harmless member
    assert outside_files(tmp_path, target) == set()
    assert not Path("/tmp/fsanet-evil.txt").exists()


def _dev(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tar_info(name, kind)
    info.devmajor, info.devminor = 1, 3
    return info


TAR_ATTACKS = {
    "traversal": ([("ok.txt", b"fine"), ("../evil.txt", b"pwned")], "../evil.txt", "'..'"),
    "absolute": ([("/tmp/fsanet-evil.txt", b"pwned")], "/tmp/fsanet-evil.txt", "absolute"),
    "symlink escape": ([tar_info("a/ln", tarfile.SYMTYPE, "../../outside")], "a/ln", "outside"),
    "symlink absolute": ([tar_info("ln", tarfile.SYMTYPE, "/etc")], "ln", "absolute"),
    "hardlink escape": ([tar_info("hl", tarfile.LNKTYPE, "../outside.txt")], "hl", "hard link"),
    "hardlink absolute": ([tar_info("hl", tarfile.LNKTYPE, "/etc/passwd")], "hl", "hard link"),
    "through a link": (
        [tar_info("ln", tarfile.SYMTYPE, "sub"), tar_info("sub", tarfile.DIRTYPE), ("ln/x.txt", b"x")],
        "ln/x.txt",
        "through the link",
    ),
    "char device": ([_dev("dev/null2", tarfile.CHRTYPE)], "dev/null2", "device"),
    "block device": ([_dev("sda", tarfile.BLKTYPE)], "sda", "device"),
    "fifo": ([tar_info("pipe", tarfile.FIFOTYPE)], "pipe", "FIFO"),
}


@pytest.mark.parametrize("case", sorted(TAR_ATTACKS))
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_malicious_tar_refused(tmp_path, case, mode):
    members, bad, why = TAR_ATTACKS[case]
    arc = make_tar(tmp_path / ("evil.tar" if mode == "w" else "evil.tgz"), members, mode)
    target = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(arc, target, progress=False)
    msg = str(err.value)
    assert f"'{bad}'" in msg and why in msg
    assert not target.exists()
    assert outside_files(tmp_path, target) == set()
    assert not Path("/tmp/fsanet-evil.txt").exists()


def test_unsafe_error_is_a_user_error():
    # the CLI reports ValueError subclasses as one line
    assert issubclass(UnsafeArchiveError, ValueError) and issubclass(ArchiveError, ValueError)


# --------------------------------------------------------------------------------------------
# broken archives and interrupted extraction
# --------------------------------------------------------------------------------------------
def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is an HTML error page, not a zip")
    with pytest.raises(ArchiveError, match="neither a zip nor a tar"):
        safe_extract(junk, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        safe_extract(tmp_path / "missing.zip", tmp_path / "out", progress=False)


def test_corrupt_member_leaves_no_marker_and_no_files(tmp_path):
    arc = make_zip(tmp_path / "c.zip", [("a.txt", b"A" * 1000, 0o100644), ("b.txt", b"B" * 1000, 0o100644)])
    raw = bytearray(arc.read_bytes())
    pos = raw.find(b"B" * 100)  # stored uncompressed: flip payload bytes so the CRC check fails
    raw[pos : pos + 10] = b"X" * 10
    arc.write_bytes(bytes(raw))
    target = tmp_path / "out"
    with pytest.raises(ArchiveError, match="corrupt"):
        safe_extract(arc, target, progress=False)
    assert list(target.iterdir()) == []  # staging removed, a.txt never moved in, no marker


def test_failure_while_moving_into_place_leaves_no_marker(tmp_path, monkeypatch):
    arc = make_zip(tmp_path / "m.zip", [("a.txt", b"A", 0o100644)])
    target = tmp_path / "out"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(archive, "_merge", boom)
    with pytest.raises(OSError, match="disk full"):
        safe_extract(arc, target, progress=False)
    assert list(target.iterdir()) == []
    monkeypatch.undo()
    safe_extract(arc, target, progress=False)  # the rerun completes
    assert (target / "a.txt").read_bytes() == b"A" and is_extracted(arc, target)


# --------------------------------------------------------------------------------------------
# property: a relative symlink is accepted exactly when the OS would resolve it inside the target
# --------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "a", "b"]), min_size=1, max_size=6))
def test_symlink_check_matches_os_resolution(tmp_path_factory, parts):
    root = tmp_path_factory.mktemp("root")
    (root / "d1" / "d2").mkdir(parents=True)
    link = "/".join(parts)
    resolved = os.path.realpath(os.path.join(root, "d1", "d2", link))
    inside = resolved == str(root.resolve()) or resolved.startswith(str(root.resolve()) + os.sep)
    try:
        check_members([Member("d1/d2/ln", "symlink", link)], "prop")
        accepted = True
    except UnsafeArchiveError:
        accepted = False
    assert accepted == inside, (link, resolved)
    assert posixpath.normpath(link)  # the strategy yields non-empty links
