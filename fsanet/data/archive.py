"""Safe, verified, atomic extraction of zip and tar (plain, gzip, bzip2, xz) archives.

An archive is read twice.

1. The scan lists every member and checks, before anything is written:

   - its path (:func:`check_members`): an absolute path, a ``..`` component, a backslash, a device or
     FIFO, a member inside a member that is a file or a link, or a link whose target resolves outside the
     target folder, followed through the archive's other links and the links already on disk there,
     refuses the whole archive with an :class:`UnsafeArchiveError` naming the member;
   - its declared size, against the limits of :class:`fsanet.config.ExtractConfig` (expansion ratio, the
     expected total, free disk space): an :class:`ArchiveLimitError` names the key that allows more;
   - the archive's integrity: a tar stream is read to the very end of its file, through the gzip, bzip2
     or xz trailer, and only zero padding may follow its end-of-archive blocks; zip members must be
     stored or deflated and not encrypted.

2. The extraction writes the members into a staging folder inside the target, reading each one to its
   end, so that zip CRCs are checked and a member producing more or fewer bytes than its header declares
   is refused, and the tar stream is verified to its end once more. Only then are the staged entries
   moved into place by renames and a marker recording the finished extraction written (a rerun skips it).

Every failure is one :class:`ArchiveError` (a ``ValueError``, which the CLI prints as one line) naming the
archive, what is wrong and what to do, and leaves no marker, no extracted file and no staging folder.
Files get the archive's permission bits less the process umask, folders ``0o775`` less the umask;
neither is ever writable by others. A staging folder left behind by a killed extraction is removed by
the next extraction of that archive into that target.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from fsanet.config import ExtractConfig
from fsanet.io import read_json, write_json

try:
    import fcntl
except ImportError:  # no flock (Windows): staging folders are never judged stale there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ArchiveError",
    "ArchiveLimitError",
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
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_FIX = "delete it and download it again"
_CHUNK = 1 << 20  # bytes read at a time while copying a member
_MAX_LINK = 4095  # longest symlink target accepted (Linux PATH_MAX less the terminating NUL)
_MAX_HOPS = 40  # links followed while resolving one link target (the Linux limit)
_MAX_TAR_HEADER = 1 << 20  # largest pax or GNU long-name header tarfile may read into memory
_MAX_TAR_PADDING = 1 << 20  # zero bytes accepted after a tar's first end-of-archive block
_TAR_EXTENDED = {
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
}
# Magic numbers of the compressions tarfile reads; the value is the tarfile.open mode suffix.
_TAR_COMPRESSION = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
_FORMATS = {
    "zip": "zip archive",
    "tar": "tar archive",
    "gz": "gzip-compressed tar archive",
    "bz2": "bzip2-compressed tar archive",
    "xz": "xz-compressed tar archive",
}
# Zip members must be stored or deflated: zipfile inflates those in bounded steps, but decompresses a
# bzip2 or lzma member's input chunk in one call whatever its output size (a memory bomb).
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
_ZIP_METHOD_NAMES = {
    9: "deflate64",
    12: "bzip2",
    14: "lzma",
    93: "zstandard",
    95: "xz",
    98: "ppmd",
    99: "AES",
}
# What reading an archive can raise besides ArchiveError: tarfile, zipfile, the decompressors (gzip's
# BadGzipFile and bz2's errors are OSErrors), zipfile for encrypted (RuntimeError) or unsupported
# (NotImplementedError) members, and name decoding (UnicodeDecodeError, a ValueError).
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


class ArchiveError(ValueError):
    """The archive is unreadable, corrupt or inconsistent; the message names it and the fix."""


class UnsafeArchiveError(ArchiveError):
    """A member of the archive would write outside the target (or is a device file)."""


class ArchiveLimitError(ArchiveError):
    """The archive would expand beyond a limit (``data.extract``, the expected size or the free disk)."""


@dataclass(frozen=True)
class Member:
    """One archive entry, reduced to what the checks and the extraction need.

    Attributes:
        name: the path stored in the archive ('/'-separated).
        kind: 'file', 'dir', 'symlink', 'hardlink' or 'special' (devices, FIFOs, anything else).
        link: the link target for links, else ''.
        size: the declared uncompressed size of a file, else 0.
        packed: the compressed size of a zip file member; None where unknown (tar members).
        mode: the permission bits the archive stores, or None if it stores none.
        crc: the CRC-32 of a zip file or symlink member's data; None for tar members.
    """

    name: str
    kind: str
    link: str = ""
    size: int = 0
    packed: int | None = None
    mode: int | None = None
    crc: int | None = None


# --------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------
def _q(text: str) -> str:
    """``text`` in single quotes, with control characters escaped so that a message stays one line."""
    return "'" + _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text) + "'"


def _human(n: float) -> str:
    """A byte count for people: '512 bytes', '1.5 MiB', '2.5 GiB'."""
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


@contextlib.contextmanager
def _reading(archive: Path, fmt: str, member: str | None = None) -> Iterator[None]:
    """Turn an error raised while reading ``archive`` (never while writing) into one ArchiveError line.

    Args:
        archive: the archive file, named in the message.
        fmt: its format (a key of ``_FORMATS``).
        member: the member being read, if any.
    """
    try:
        yield
    except ArchiveError:
        raise
    except _READ_ERRORS as err:
        where = f" in member {_q(member)}" if member else ""
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ArchiveError(
            f"{archive}: corrupt or truncated {_FORMATS[fmt]}{where} ({detail}); nothing was extracted; "
            f"{_FIX}"
        ) from None


# --------------------------------------------------------------------------------------------
# reading members
# --------------------------------------------------------------------------------------------
def _archive_format(path: Path) -> str:
    """'zip', 'tar' (uncompressed), or the compression of a tar stream: 'gz', 'bz2' or 'xz'."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: archive not found")
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, fmt in _TAR_COMPRESSION.items():
        if head.startswith(magic):
            return fmt
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except _READ_ERRORS:
        pass
    if zipfile.is_zipfile(path):  # a zip with data in front (self-extracting)
        return "zip"
    raise ArchiveError(f"{path}: neither a zip nor a tar archive (corrupt or truncated download?); {_FIX}")


def _zip_unix_mode(info: zipfile.ZipInfo) -> int | None:
    """The unix mode (type and permission bits) a unix zip tool stored, else None."""
    mode = info.external_attr >> 16
    return mode if info.create_system == 3 and mode else None


def _zip_kind(info: zipfile.ZipInfo) -> str:
    """The member's kind: zip stores a symlink as a member of mode S_IFLNK whose data is the target."""
    if info.is_dir():
        return "dir"
    mode = _zip_unix_mode(info)
    if mode is None or stat.S_IFMT(mode) in (0, stat.S_IFREG):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"  # devices, FIFOs, sockets, a folder mode on a name without '/', unknown types


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


def _copy_exact(src: IO[bytes], write: Callable[[bytes], Any], m: Member, archive: Path, fmt: str) -> None:
    """Copy a member's data, refusing it if it holds more or fewer bytes than declared, or a bad CRC.

    At most ``m.size + 1`` bytes are read, so a member that lies about its size is stopped there.

    Args:
        src: the member's data; for zip it must yield bytes beyond the declared size, unchecked (see
            :func:`_zip_open`).
        write: called with each chunk.
        m: the member: its declared size, and for zip its CRC.
        archive: the archive file (for messages).
        fmt: its format.
    """
    name, size = m.name, m.size
    left, crc = size + 1, 0
    while left > 0:
        with _reading(archive, fmt, name):
            chunk = src.read(min(_CHUNK, left))
        if not chunk:
            break
        if m.crc is not None:
            crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
        if left == 0:
            raise ArchiveError(
                f"{archive}: member {_q(name)} holds more than the {size} bytes its header declares; "
                f"nothing was extracted; {_FIX}"
            )
        write(chunk)
    if left > 1:
        raise ArchiveError(
            f"{archive}: member {_q(name)} holds {size + 1 - left} bytes where its header declares {size}; "
            f"nothing was extracted; {_FIX}"
        )
    if m.crc is not None and crc != m.crc:
        raise ArchiveError(
            f"{archive}: member {_q(name)} fails its CRC check (CRC-32 {crc:08x}, declared {m.crc:08x}); "
            f"nothing was extracted; {_FIX}"
        )


def _zip_open(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
    """Open a zip member so that data beyond its declared size is returned, not silently dropped.

    zipfile stops a member at its declared ``file_size`` (and checks the CRC of what it returned), so
    a member whose data runs on is cut short without an error. Reading a copy of the entry that declares
    one byte more and no CRC lets :func:`_copy_exact` see the extra byte and check the CRC itself.
    """
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    del probe.CRC  # zipfile checks no CRC for an entry without one
    return zf.open(probe)


def _zip_link(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> str:
    """The target of a zip symlink member (its data), read with the size and CRC checks of any member."""
    name = info.filename
    if info.file_size > _MAX_LINK:
        raise ArchiveError(
            f"{archive}: symlink member {_q(name)} declares a {info.file_size}-byte target (at most "
            f"{_MAX_LINK}); nothing was extracted; {_FIX}"
        )
    data = bytearray()
    with _reading(archive, "zip", name):
        src = _zip_open(zf, info)
    with src:
        _copy_exact(
            src, data.extend, Member(name, "symlink", size=info.file_size, crc=info.CRC), archive, "zip"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text or "\x00" in text:
        raise ArchiveError(
            f"{archive}: symlink member {_q(name)} has an empty or unreadable target; nothing was "
            f"extracted; {_FIX}"
        )
    return text


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> Member:
    """Describe a zip entry; refuse encrypted members and compression methods that are not extracted."""
    kind, mode = _zip_kind(info), _zip_unix_mode(info)
    perm = mode & 0o777 if mode is not None else None
    if kind in ("dir", "special"):
        return Member(info.filename, kind, mode=perm)
    if info.flag_bits & 0x1:
        raise ArchiveError(
            f"{archive}: member {_q(info.filename)} is encrypted, which extraction does not support; "
            "nothing was extracted; get an unencrypted copy of the archive"
        )
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
        raise ArchiveError(
            f"{archive}: member {_q(info.filename)} uses compression method {info.compress_type} ({method}); "
            "only stored and deflate members are extracted; nothing was extracted; get a copy of the "
            "archive packed with deflate"
        )
    if kind == "symlink":
        return Member(info.filename, kind, link=_zip_link(zf, info, archive), mode=perm)
    return Member(
        info.filename, kind, size=info.file_size, packed=info.compress_size, mode=perm, crc=info.CRC
    )


def _tar_member(info: tarfile.TarInfo) -> Member:
    kind = _tar_kind(info)
    return Member(
        info.name,
        kind,
        link=info.linkname if kind in ("symlink", "hardlink") else "",
        size=info.size if kind == "file" else 0,
        mode=info.mode & 0o777,
    )


class _StrictTarInfo(tarfile.TarInfo):
    """A TarInfo whose reading refuses what tarfile would silently take as the end of the archive.

    tarfile ends the member list at the first unreadable header after the first member, so a corrupt
    (or lying) header drops every later member without an error; and it reads pax and GNU long-name
    headers into memory whatever their size. Both are errors here. A block of zeros still ends the
    member list; :func:`_finish_tar` checks what follows it.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        offset = tarfile_.offset
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.EmptyHeaderError:
            raise tarfile.ReadError("it ends without its end-of-archive blocks") from None
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as err:
            raise tarfile.ReadError(
                f"unreadable member header at byte {offset} of the tar stream: {err}"
            ) from None

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        # the method tarfile's own comments name for subclasses that process headers by type
        if self.type in _TAR_EXTENDED and self.size > _MAX_TAR_HEADER:
            raise tarfile.ReadError(
                f"a {self.size}-byte extended header (at most {_MAX_TAR_HEADER} accepted)"
            )
        return super()._proc_member(tarfile_)


def _finish_tar(tf: tarfile.TarFile, archive: Path, fmt: str) -> None:
    """Read a tar stream from its first end-of-archive block to the end of the file.

    tarfile stops at the first block of zeros; everything after it must be zeros too (the second end
    block and the record padding). Reading it to the end makes gzip, bzip2 and xz check their trailers
    (CRC and length) and any further compressed stream in the file.
    """
    seen = 0
    while True:
        with _reading(archive, fmt):
            chunk = tf.fileobj.read(_CHUNK)
        if not chunk:
            return
        if chunk.strip(b"\0") or seen + len(chunk) > _MAX_TAR_PADDING:
            raise ArchiveError(
                f"{archive}: corrupt {_FORMATS[fmt]}: data (or over {_human(_MAX_TAR_PADDING)} of padding) "
                f"follows its end-of-archive block at byte {tf.offset} of the tar stream (a damaged member "
                "header "
                f"ends the member list there, or another archive was appended); nothing was extracted; {_FIX}"
            )
        seen += len(chunk)


def _tar_entries(archive: Path, fmt: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, Member]]:
    """The members of a tar archive in order; after the last, the stream is verified to its end."""
    mode = "r:" if fmt == "tar" else f"r:{fmt}"
    with _reading(archive, fmt):
        tf = tarfile.open(archive, mode, tarinfo=_StrictTarInfo)
    with tf:
        while True:
            with _reading(archive, fmt):
                info = tf.next()
            if info is None:
                break
            yield tf, info, _tar_member(info)
        _finish_tar(tf, archive, fmt)


def _check_zip_directory(zf: zipfile.ZipFile, archive: Path) -> None:
    """Refuse a zip whose central directory lists fewer (or more) entries than its end record counts.

    zipfile reads the central directory by its byte size and stops without an error where an entry's
    lengths overrun it, so a damaged comment or extra-field length silently drops every later entry.
    Writers without zip64 store the count modulo 65536, which is accepted.
    """
    with open(archive, "rb") as f:
        end = zipfile._EndRecData(f)  # the end record as zipfile itself reads it (zip64 included)
    counted, listed = (None if end is None else end[zipfile._ECD_ENTRIES_TOTAL]), len(zf.infolist())
    if counted != listed and not (counted is not None and counted < 0xFFFF and counted == listed % 0x10000):
        raise ArchiveError(
            f"{archive}: corrupt zip archive: its central directory lists {len(zf.infolist())} entries where "
            f"its end record counts {counted}; nothing was extracted; {_FIX}"
        )


def _zip_entries(archive: Path) -> Iterator[tuple[zipfile.ZipFile, zipfile.ZipInfo, Member]]:
    """The members of a zip archive in central-directory order."""
    with _reading(archive, "zip"):
        zf = zipfile.ZipFile(archive)
    with zf:
        _check_zip_directory(zf, archive)
        for info in zf.infolist():
            yield zf, info, _zip_member(zf, info, archive)


def _entries(archive: Path, fmt: str) -> Iterator[tuple[Any, Any, Member]]:
    return _zip_entries(archive) if fmt == "zip" else _tar_entries(archive, fmt)


def archive_members(path: str | Path) -> list[Member]:
    """List the entries of a zip or tar(.gz/.bz2/.xz) archive (links with their targets).

    A tar stream is read to its end and verified on the way (see :func:`_finish_tar`).

    Raises:
        FileNotFoundError: the archive does not exist.
        ArchiveError: it is neither a zip nor a tar file, or it is corrupt, or a zip member is
            encrypted or compressed with a method other than stored/deflate.
    """
    path = Path(path)
    fmt = _archive_format(path)
    with contextlib.closing(_entries(path, fmt)) as entries:
        return [member for _, _, member in entries]


# --------------------------------------------------------------------------------------------
# path checks
# --------------------------------------------------------------------------------------------
def _parts(name: str) -> list[str]:
    """The components of an archive path, without empty and '.' ones."""
    return [p for p in name.split("/") if p not in ("", ".")]


def _escapes(rel: str) -> bool:
    """True if a '/'-separated relative path, once normalised, leaves its root."""
    norm = posixpath.normpath(rel)
    return norm == ".." or norm.startswith("../") or posixpath.isabs(norm)


class _Layout:
    """The target folder as it will be once the archive is in place: its members over what is on disk.

    Extraction replaces an entry on disk by the archive's entry of the same path, except that a folder
    of the archive is merged into a folder on disk; so a path the archive holds (or a parent folder of
    a member) is the archive's, and any other path is whatever exists on disk under ``root``.
    """

    def __init__(self, kinds: dict[str, str], links: dict[str, str], root: str | Path | None) -> None:
        self.kinds, self.links = kinds, links
        self.root = None if root is None else os.path.abspath(root)

    def lookup(self, path: list[str]) -> tuple[str, str]:
        """The kind ('dir', 'file', 'symlink' or 'missing') of a root-relative path, and a link's target."""
        key = "/".join(path)
        if key in self.links:
            return "symlink", self.links[key]
        if key in self.kinds:
            return self.kinds[key], ""
        if self.root is None:
            return "missing", ""
        for i in range(1, len(path)):  # a disk entry counts only below real folders kept by extraction
            prefix = "/".join(path[:i])
            if self.kinds.get(prefix, "dir") != "dir":
                return "missing", ""
            try:
                if not stat.S_ISDIR(os.lstat(os.path.join(self.root, prefix)).st_mode):
                    return "missing", ""
            except OSError:
                return "missing", ""
        disk = os.path.join(self.root, key)
        try:
            mode = os.lstat(disk).st_mode
        except OSError:
            return "missing", ""
        if stat.S_ISLNK(mode):
            return "symlink", os.readlink(disk)
        return ("dir" if stat.S_ISDIR(mode) else "file"), ""

    def inside(self, absolute: str) -> list[str] | None:
        """The root-relative components of an absolute path (followed on disk), or None if outside."""
        if self.root is None:
            return None
        real, base = os.path.realpath(absolute), os.path.realpath(self.root)
        if real == base:
            return []
        if real.startswith(base + os.sep):
            return real[len(base) + 1 :].split(os.sep)
        return None


def _link_leaves(parent: list[str], target: str, layout: _Layout) -> str | None:
    """Follow a relative link target as the OS will once the archive is in place.

    Components that are links (of the archive, or on disk where the archive holds nothing) are followed;
    the others, existing or not, are taken as folders, so ``x/..`` is refused if ``..`` would leave.

    Args:
        parent: the link's folder, as root-relative components.
        target: the link's target.
        layout: the target folder after extraction.

    Returns:
        None if the target stays inside the root, else why it does not.
    """
    here = list(parent)
    todo = list(reversed(target.split("/")))  # components still to walk, next one last
    hops: list[str] = []
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return "climbs above the target folder" + (
                    f" through the link(s) {', '.join(map(_q, hops))}" if hops else ""
                )
            here.pop()
            continue
        kind, link = layout.lookup([*here, part])
        if kind != "symlink":
            here.append(part)
            continue
        hops.append("/".join([*here, part]))
        if len(hops) > _MAX_HOPS:
            return f"passes more than {_MAX_HOPS} links (a loop?)"
        if link.startswith("/"):
            inside = layout.inside(link)
            if inside is None:
                return f"reaches the absolute path {_q(link)} through the link {_q(hops[-1])}"
            here = inside
        else:
            todo.extend(reversed(link.split("/")))
    return None


def check_members(
    members: Iterable[Member], archive: str | Path = "archive", root: str | Path | None = None
) -> int:
    """Refuse the archive if any member could write or point outside the extraction folder.

    Checked: each path (no backslash, absolute path or ``..``), each kind (no device, FIFO or other
    special file), that no member lies inside another member that is a file or a link, that a name
    given twice keeps its kind, that a hard link names a file stored before it, and that every symlink
    resolves inside the folder: its target is followed through the archive's other links and, where
    the archive holds nothing, through the entries already on disk under ``root``.

    Args:
        members: the archive's entries, in archive order.
        archive: the archive's name, used in the error message.
        root: the folder the archive is extracted into (None: check the archive alone).

    Returns:
        The number of members.

    Raises:
        UnsafeArchiveError: naming the first offending member and why it is refused.
        ArchiveError: a member given twice with different kinds, or inside a member that is a file.
    """
    members = list(members)
    kinds: dict[str, str] = {}  # clean path -> 'dir', 'file' or 'symlink' (hard links count as files)
    links: dict[str, str] = {}
    clean: list[list[str]] = []

    def refuse(m: Member, why: str, unsafe: bool = True) -> ArchiveError:
        cls = UnsafeArchiveError if unsafe else ArchiveError
        return cls(
            f"{archive}: refused member {_q(m.name)}: {why}; nothing was extracted; {_FIX} from its official "
            "source"
        )

    for m in members:
        name = m.name
        if "\\" in name:
            raise refuse(m, "backslash in the path")
        if name.startswith("/") or _DRIVE.match(name):
            raise refuse(m, "absolute path")
        parts = _parts(name)
        if ".." in parts:
            raise refuse(m, "'..' path component")
        clean.append(parts)
        if not parts:
            continue  # the archive root itself ('./')
        path = "/".join(parts)
        if m.kind == "special":
            raise refuse(m, "device file, FIFO or other special file")
        if m.kind == "symlink":
            if not m.link or m.link.startswith("/") or _DRIVE.match(m.link) or "\\" in m.link:
                raise refuse(m, f"symlink to the absolute path {_q(m.link)}")
            links[path] = m.link
        elif m.kind == "hardlink":
            if not m.link or m.link.startswith("/") or _escapes(m.link):
                raise refuse(m, f"hard link {_q(m.link)} points outside the target")
            if kinds.get("/".join(_parts(m.link))) != "file":
                raise refuse(
                    m, f"hard link {_q(m.link)} does not name a file stored before it in the archive"
                )
        kind = "file" if m.kind == "hardlink" else m.kind
        before = kinds.get(path)
        if before is not None and not (before == kind and kind in ("dir", "file")):
            raise refuse(
                m,
                f"the archive holds this path twice, as a {before} and as a {kind}",
                "symlink" in (before, kind),
            )
        kinds[path] = kind

    for m, parts in zip(members, clean):
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if kinds.get(prefix) == "symlink":
                raise refuse(m, f"path goes through the link {_q(prefix)}")
            if kinds.get(prefix) == "file":
                raise refuse(
                    m, f"it lies inside {_q(prefix)}, which the archive holds as a file", unsafe=False
                )
    for parts in clean:  # the parent folders of members exist after extraction even if not listed
        for i in range(1, len(parts)):
            kinds.setdefault("/".join(parts[:i]), "dir")

    layout = _Layout(kinds, links, root)
    for m, parts in zip(members, clean):
        if m.kind == "symlink":
            why = _link_leaves(parts[:-1], m.link, layout)
            if why is not None:
                raise refuse(m, f"symlink {_q(m.link)} points outside the target: it {why}")
    return len(members)


def _check_reserved(members: Iterable[Member], archive: Path) -> None:
    """Refuse top-level members named like the extraction's own marker or staging folders."""
    reserved = f".{archive.name}.extract"
    for m in members:
        parts = _parts(m.name)
        if parts and parts[0].startswith(reserved):
            raise UnsafeArchiveError(
                f"{archive}: refused member {_q(m.name)}: the name is reserved for the extraction's marker "
                f"and staging folders; nothing was extracted; {_FIX} from its official source"
            )


# --------------------------------------------------------------------------------------------
# size limits
# --------------------------------------------------------------------------------------------
def _existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (where a disk-usage query can be made)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class _Budget:
    """The extraction limits, applied to an archive's declared sizes member by member as it is listed.

    Args:
        archive: the archive file.
        target: the extraction folder (its disk's free space counts).
        limits: ``data.extract`` (:class:`fsanet.config.ExtractConfig` or the config node).
        unpacked_bytes: the expected total uncompressed size, or None if unknown.
    """

    def __init__(
        self, archive: Path, target: Path, limits: ExtractConfig, unpacked_bytes: int | None
    ) -> None:
        self.archive, self.target, self.limits, self.unpacked = archive, target, limits, unpacked_bytes
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.free = shutil.disk_usage(_existing_folder(target)).free
        self.total = 0  # declared content bytes
        self.stream = 0  # content plus the tar headers: what decompression produces

    def add(self, m: Member, overhead: int) -> None:
        """Count one member (``overhead``: its bytes besides the content) and check every limit."""
        self._member_ratio(m)
        self.total += m.size
        self.stream += m.size + overhead
        self._expected_total()
        self._archive_ratio()
        self._free_space()

    def _refuse(self, what: str, fix: str) -> ArchiveLimitError:
        return ArchiveLimitError(f"{self.archive}: {what}; nothing was extracted; {fix}")

    def _too_compressed(self, size: int, packed: int) -> bool:
        limits = self.limits
        return size >= limits.ratio_min_bytes and size > limits.max_ratio * packed

    def _ratio_fix(self) -> str:
        return (
            f"data.extract.max_ratio = {self.limits.max_ratio:g}, applied from data.extract.ratio_min_bytes "
            f"= {self.limits.ratio_min_bytes} bytes on (a decompression bomb?); if the archive is genuine, "
            f"raise data.extract.max_ratio, else {_FIX}"
        )

    def _member_ratio(self, m: Member) -> None:
        if m.packed is not None and self._too_compressed(m.size, m.packed):
            ratio = m.size / max(m.packed, 1)
            raise self._refuse(
                f"member {_q(m.name)} expands {ratio:.0f}-fold ({_human(m.size)} from {_human(m.packed)})",
                f"the limit is {self._ratio_fix()}",
            )

    def _archive_ratio(self) -> None:
        if self._too_compressed(self.stream, self.archive_bytes):
            ratio = self.stream / self.archive_bytes
            raise self._refuse(
                f"its members expand at least {ratio:.0f}-fold ({_human(self.stream)} from a "
                f"{_human(self.archive_bytes)} archive)",
                f"the limit is {self._ratio_fix()}",
            )

    def _expected_total(self) -> None:
        if self.unpacked is None:
            return
        margin = self.limits.size_margin
        if self.total > self.unpacked * (1 + margin):
            raise self._refuse(
                f"its members hold at least {self.total} bytes, more than data.download[].unpacked_bytes = "
                f"{self.unpacked} plus data.extract.size_margin = {margin:g}",
                f"if the dataset's manifest gives a larger size, correct those keys, else {_FIX}",
            )

    def _free_space(self) -> None:
        limits = self.limits
        needed = self.total * (1 + limits.free_margin) + limits.min_free_bytes
        if needed > self.free:
            raise ArchiveLimitError(
                f"{self.target}: too little free disk space to extract {self.archive}: it needs at least "
                f"{_human(needed)} ({_human(self.total)} of members, plus data.extract.free_margin = "
                f"{limits.free_margin:g} of that, plus data.extract.min_free_bytes = "
                f"{limits.min_free_bytes}) "
                f"and {_human(self.free)} are free; nothing was extracted; free some space or lower those "
                "keys"
            )


def _scan(archive: Path, fmt: str, budget: _Budget) -> list[Member]:
    """List the members, checking each against ``budget`` as soon as its header is read."""
    overhead = 0 if fmt == "zip" else tarfile.BLOCKSIZE
    members = []
    with contextlib.closing(_entries(archive, fmt)) as entries:
        for _, _, member in entries:
            budget.add(member, overhead)
            members.append(member)
    return members


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
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


def _make_folders(base: Path, parts: Iterable[str] = ()) -> Path:
    """Create ``base`` and ``base/parts...`` where missing, each ``0o775`` less the umask; return the last.

    Unlike ``Path.mkdir(parents=True)``, every created folder gets that mode (never writable by others,
    whatever the umask), and an existing non-folder on the way is an error.
    """
    missing = []
    top = base.absolute()
    while not top.exists() and top != top.parent:
        missing.append(top.name)
        top = top.parent
    path = top
    for part in [*reversed(missing), *parts]:
        path = path / part
        try:
            os.mkdir(path, 0o775)
        except FileExistsError:
            if path.is_symlink() or not path.is_dir():
                raise NotADirectoryError(f"{path}: exists and is not a folder") from None
    return path


def _write_file(dest: Path, opener: Callable[[], IO[bytes]], m: Member, archive: Path, fmt: str) -> None:
    """Create ``dest`` (never through a link) with the member's data and permissions less the umask."""
    perm = ((0o644 if m.mode is None else m.mode) | 0o600) & 0o775  # owner rw, never o+w or set-id
    if os.path.lexists(dest):  # the archive stores this file twice: the later copy wins
        dest.unlink()
    with _reading(archive, fmt, m.name):
        src = opener()
    with src:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, perm)
        with open(fd, "wb") as out:
            _copy_exact(src, out.write, m, archive, fmt)


def _place(staging: Path, m: Member, opener: Callable[[], IO[bytes]], archive: Path, fmt: str) -> None:
    """Write one checked member into the staging folder."""
    parts = _parts(m.name)
    if not parts:
        return
    parent = _make_folders(staging, parts[:-1])
    dest = parent / parts[-1]
    if not _inside(parent, staging):  # repeats check_members at write time (defence in depth)
        raise UnsafeArchiveError(f"{archive}: refused member {_q(m.name)}: resolves outside the target")
    if m.kind == "dir":
        _make_folders(dest)
    elif m.kind == "file":
        _write_file(dest, opener, m, archive, fmt)
    elif m.kind == "symlink":
        os.symlink(m.link, dest)
    elif m.kind == "hardlink":
        if os.path.lexists(dest):
            dest.unlink()
        os.link(staging.joinpath(*_parts(m.link)), dest, follow_symlinks=False)
    else:  # check_members refuses these before any writing
        raise UnsafeArchiveError(f"{archive}: refused member {_q(m.name)}: special file")


def _extract(archive: Path, fmt: str, staging: Path, members: list[Member], progress: bool) -> None:
    """Read the archive again and write every member into ``staging``; each must match the scan."""
    count = 0
    with (
        contextlib.closing(_entries(archive, fmt)) as entries,
        tqdm(total=len(members), desc=f"extract {archive.name}", unit="file", disable=not progress) as bar,
    ):
        for handle, info, member in entries:
            if count >= len(members) or members[count] != member:
                break
            opener = functools.partial(
                _zip_open if fmt == "zip" else tarfile.TarFile.extractfile, handle, info
            )
            _place(staging, member, opener, archive, fmt)
            count += 1
            bar.update()
        else:
            if count == len(members):
                return
    raise ArchiveError(f"{archive}: changed while it was being extracted; nothing was extracted; {_FIX}")


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


# --------------------------------------------------------------------------------------------
# staging folders and their locks
# --------------------------------------------------------------------------------------------
def _staging_prefix(archive: Path) -> str:
    return f".{archive.name}.extracting-"


def _lock_folder(path: Path, wait: bool) -> int | None:
    """Take an exclusive flock on the folder ``path``: its descriptor, or None if another process has it.

    The kernel releases the lock when the holder closes the descriptor or dies, even by SIGKILL.

    Raises:
        OSError: the file system does not support the lock.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def _hold(path: Path) -> int | None:
    """Wait for and take the lock of the folder ``path``; None where folder locks are not available."""
    if fcntl is None:
        return None
    try:
        return _lock_folder(path, wait=True)
    except OSError as err:
        log.debug("%s: no folder lock (%s)", path, err)
        return None


@contextlib.contextmanager
def _target_locked(target: Path) -> Iterator[None]:
    """Hold the target folder's lock: removing stale staging folders and creating (and locking) a new
    one happen under it, so a cleaner never sees a new staging folder before its owner has locked it."""
    fd = _hold(target)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _tree_size(path: Path) -> int:
    total = 0
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _remove_stale_staging(archive: Path, target: Path) -> None:
    """Remove the staging folders of ``archive`` in ``target`` that no running extraction holds.

    A running extraction holds a flock on its staging folder (see :func:`safe_extract`), so one that
    can be locked was left by an extraction that was killed. Call with the target's lock held.
    """
    if fcntl is None:
        return
    prefix = _staging_prefix(archive)
    with os.scandir(target) as scan:
        stale = [Path(e.path) for e in scan if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)]
    for path in stale:
        try:
            fd = _lock_folder(path, wait=False)
        except OSError as err:
            log.warning(
                "%s: left in place: cannot tell whether an extraction uses it (%s); delete it by hand "
                "if none runs",
                path,
                err,
            )
            continue
        if fd is None:
            log.info("%s: in use by another extraction of %s, left in place", path, archive.name)
            continue
        try:
            size = _tree_size(path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        if path.exists():
            log.warning(
                "%s: left by an interrupted extraction, but could not be removed entirely; delete it by hand",
                path,
            )
        else:
            log.warning(
                "removed %s (%s), left by an interrupted extraction of %s", path, _human(size), archive.name
            )


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def safe_extract(
    archive: str | Path,
    target: str | Path,
    digest: str | None = None,
    progress: bool = True,
    *,
    limits: ExtractConfig | None = None,
    unpacked_bytes: int | None = None,
) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) archive into ``target``, safely, verified and atomically.

    The archive is scanned first (paths, links, declared sizes against ``limits``, the free disk, and
    for tar the whole compressed stream); then unpacked into a staging folder inside ``target``, every
    member read to its end (CRCs, declared sizes) and the tar stream verified again; then moved into
    place by renames, and a marker recording the archive name, digest and member count written last.
    A rerun with the marker present does nothing. A failure leaves no marker and no files, and its
    staging folder is removed; one left by a killed process is removed by the next run.

    Args:
        archive: the zip/tar/tar.gz/tgz/tar.bz2/tar.xz file.
        target: the folder the archive's top-level entries go into (created if needed).
        digest: the archive's verified checksum (e.g. ``"md5:..."``), stored in the marker; a marker
            with another digest does not count as finished.
        progress: show a tqdm bar over the members.
        limits: ``data.extract`` (:class:`fsanet.config.ExtractConfig` or the loaded config node);
            None: the defaults.
        unpacked_bytes: the expected total uncompressed size (``data.download[].unpacked_bytes``);
            None: unknown, not checked.

    Returns:
        ``target``.

    Raises:
        FileNotFoundError: the archive does not exist.
        ArchiveError: unreadable, corrupt or inconsistent archive.
        UnsafeArchiveError: a member would escape ``target`` (the message names it).
        ArchiveLimitError: a size limit or the free disk space (the message names the key).
    """
    archive, target = Path(archive), Path(target)
    limits = ExtractConfig() if limits is None else limits
    if target.is_dir():
        with _target_locked(target):
            _remove_stale_staging(archive, target)
    if is_extracted(archive, target, digest):
        log.info("%s already extracted into %s", archive.name, target)
        return target
    fmt = _archive_format(archive)
    members = _scan(archive, fmt, _Budget(archive, target, limits, unpacked_bytes))
    check_members(members, archive, root=target)
    _check_reserved(members, archive)
    _make_folders(target)
    with _target_locked(target):
        staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(archive)}{os.getpid()}-", dir=target))
        held = _hold(staging)  # until the end: a cleaner leaves a held staging folder alone
    try:
        _extract(archive, fmt, staging, members, progress)
        extraction_marker(archive, target).unlink(missing_ok=True)  # a previous digest's marker
        _merge(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if held is not None:
            os.close(held)
    write_json(
        extraction_marker(archive, target),
        {"archive": archive.name, "digest": digest, "size": archive.stat().st_size, "members": len(members)},
    )
    log.info("extracted %s (%d members) into %s", archive.name, len(members), target)
    return target
