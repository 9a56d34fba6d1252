"""Safe, atomic extraction of zip and tar(.gz) archives.

Every member is checked before anything is written: an absolute path, a ``..`` component, a link
whose target leaves the extraction folder, a member reached through a link, or a device/FIFO file
makes the whole archive refused with an :class:`UnsafeArchiveError` naming the member. Accepted
archives are unpacked into a temporary folder inside the target, then moved into place by renames,
and a marker file records the finished extraction so that a rerun skips it.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fsanet.io import read_json, write_json

__all__ = [
    "ArchiveError",
    "Member",
    "UnsafeArchiveError",
    "archive_members",
    "check_members",
    "extraction_marker",
    "is_extracted",
    "safe_extract",
]

log = logging.getLogger(__name__)

_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(ValueError):
    """The file is not a readable zip or tar archive."""


class UnsafeArchiveError(ArchiveError):
    """A member of the archive would write outside the target (or is a device file)."""


@dataclass(frozen=True)
class Member:
    """One archive entry, reduced to what the safety checks need.

    Attributes:
        name: the path stored in the archive ('/'-separated).
        kind: 'file', 'dir', 'symlink', 'hardlink' or 'special' (devices, FIFOs).
        link: the link target for links, else ''.
    """

    name: str
    kind: str
    link: str = ""


def _archive_format(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: archive not found")
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    raise ArchiveError(f"{path}: neither a zip nor a tar archive (corrupt or truncated download?)")


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ArchiveError(f"{path}: unreadable zip archive ({err})") from None


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if mode and stat.S_ISLNK(mode):
        return "symlink"
    if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return "special"
    return "file"


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.isreg():
        return "file"
    return "special"  # character/block devices, FIFOs, anything else


def archive_members(path: str | Path) -> list[Member]:
    """List the entries of a zip or tar(.gz) archive (links with their targets).

    Raises:
        FileNotFoundError: the archive does not exist.
        ArchiveError: it is neither a zip nor a tar file.
    """
    path = Path(path)
    if _archive_format(path) == "zip":
        with _open_zip(path) as zf:
            out = []
            for info in zf.infolist():
                kind = _zip_kind(info)
                link = zf.read(info).decode("utf-8", "replace") if kind == "symlink" else ""
                out.append(Member(info.filename, kind, link))
            return out
    try:
        with tarfile.open(path, "r:*") as tf:
            return [Member(m.name, _tar_kind(m), m.linkname) for m in tf.getmembers()]
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ArchiveError(f"{path}: unreadable tar archive ({err})") from None


def _escapes(rel: str) -> bool:
    """True if a '/'-separated relative path, once normalised, leaves its root."""
    norm = posixpath.normpath(rel)
    return norm == ".." or norm.startswith("../") or posixpath.isabs(norm)


def check_members(members: Iterable[Member], archive: str | Path = "archive") -> int:
    """Refuse the archive if any member could write outside the extraction folder.

    Args:
        members: the archive's entries, in archive order.
        archive: the archive's name, used in the error message.

    Returns:
        The number of members.

    Raises:
        UnsafeArchiveError: naming the first offending member and why it is refused.
    """
    links: set[str] = set()
    count = 0
    for m in members:
        count += 1

        def refuse(why: str, m: Member = m) -> UnsafeArchiveError:
            return UnsafeArchiveError(f"{archive}: refused member '{m.name}': {why}; nothing was extracted")

        name = m.name
        if "\\" in name:
            raise refuse("backslash in the path")
        if name.startswith("/") or _DRIVE.match(name):
            raise refuse("absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise refuse("'..' path component")
        if not parts:
            continue  # the archive root itself ('./')
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise refuse(f"path goes through the link '{'/'.join(parts[:i])}'")
        clean = "/".join(parts)
        if m.kind == "special":
            raise refuse("device file, FIFO or other special file")
        if m.kind == "symlink":
            if m.link.startswith("/") or _DRIVE.match(m.link) or "\\" in m.link:
                raise refuse(f"symlink to the absolute path '{m.link}'")
            if _escapes(posixpath.join(posixpath.dirname(clean), m.link)):
                raise refuse(f"symlink '{m.link}' points outside the target")
            links.add(clean)
        elif m.kind == "hardlink":
            if m.link.startswith("/") or _escapes(m.link):
                raise refuse(f"hard link '{m.link}' points outside the target")
            links.add(clean)
    return count


def extraction_marker(archive: str | Path, target: str | Path) -> Path:
    """Where the 'finished' marker of ``archive`` extracted into ``target`` lives."""
    return Path(target) / f".{Path(archive).name}.extracted.json"


def is_extracted(archive: str | Path, target: str | Path, digest: str | None = None) -> bool:
    """True if a finished extraction of this archive (same digest, when given) is recorded in ``target``."""
    marker = extraction_marker(archive, target)
    if not marker.is_file():
        return False
    try:
        info = read_json(marker)
    except ValueError:
        return False
    return digest is None or info.get("digest") == digest


def _inside(path: Path, root: Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base + os.sep)


def _extract_zip(path: Path, staging: Path, progress: bool) -> None:
    with zipfile.ZipFile(path) as zf:
        for info in tqdm(zf.infolist(), desc=f"extract {path.name}", unit="file", disable=not progress):
            kind = _zip_kind(info)
            dest = staging.joinpath(*[p for p in info.filename.split("/") if p not in ("", ".")])
            if not _inside(dest.parent, staging) or not _inside(dest, staging):
                raise UnsafeArchiveError(
                    f"{path}: refused member '{info.filename}': resolves outside the target"
                )
            if kind == "dir":
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if kind == "symlink":
                os.symlink(zf.read(info).decode("utf-8"), dest)
                continue
            with zf.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(dest, mode | 0o600)


def _extract_tar(path: Path, staging: Path, progress: bool) -> None:
    with tarfile.open(path, "r:*") as tf:
        for info in tqdm(tf.getmembers(), desc=f"extract {path.name}", unit="file", disable=not progress):
            # The 'data' filter repeats the checks above at write time (defence in depth).
            tf.extract(info, staging, filter="data")


def _merge(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst`` by renames, replacing entries of the same name."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        out = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if out.is_dir() and not out.is_symlink():
                _merge(entry, out)
                continue
            if out.is_symlink() or out.exists():
                out.unlink()
            os.rename(entry, out)
        else:
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out)
            os.replace(entry, out)


def safe_extract(
    archive: str | Path,
    target: str | Path,
    digest: str | None = None,
    progress: bool = True,
) -> Path:
    """Extract a zip or tar(.gz) archive into ``target``, safely and atomically.

    All members are checked first (see :func:`check_members`); then the archive is unpacked into a
    temporary folder inside ``target``, moved into place by renames, and a marker recording the archive
    name, digest and member count is written last. A rerun with the marker present does nothing; an
    interrupted run leaves no marker, and its temporary folder is removed.

    Args:
        archive: the zip/tar/tar.gz/tgz file.
        target: the folder the archive's top-level entries go into (created if needed).
        digest: the archive's verified checksum (e.g. ``"md5:..."``), stored in the marker; a marker
            with another digest does not count as finished.
        progress: show a tqdm bar over the members.

    Returns:
        ``target``.

    Raises:
        FileNotFoundError: the archive does not exist.
        ArchiveError: unreadable archive.
        UnsafeArchiveError: a member would escape ``target`` (the message names it); nothing is written.
    """
    archive, target = Path(archive), Path(target)
    if is_extracted(archive, target, digest):
        log.info("%s already extracted into %s", archive.name, target)
        return target
    fmt = _archive_format(archive)
    count = check_members(archive_members(archive), archive)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.extracting-", dir=target))
    try:
        if fmt == "zip":
            try:
                _extract_zip(archive, staging, progress)
            except (zipfile.BadZipFile, EOFError) as err:
                raise ArchiveError(f"{archive}: corrupt zip archive ({err})") from None
        else:
            try:
                _extract_tar(archive, staging, progress)
            except tarfile.FilterError as err:
                raise UnsafeArchiveError(f"{archive}: refused member: {err}; nothing was extracted") from None
            except (tarfile.TarError, EOFError) as err:
                raise ArchiveError(f"{archive}: corrupt tar archive ({err})") from None
        _merge(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json(
        extraction_marker(archive, target),
        {"archive": archive.name, "digest": digest, "size": archive.stat().st_size, "members": count},
    )
    log.info("extracted %s (%d members) into %s", archive.name, count, target)
    return target
