"""Streaming HTTP download with resume, a progress bar and checksum verification, and the download of a
benchmark's archives that two processes may run at once.

:func:`fetch` writes ``<dest>.part`` and asks the server for the missing bytes (HTTP ``Range``) when a
partial file is already there; it retries a broken connection from where it stopped, and starts again
from zero when the server cannot resume. The finished file is checked against its checksum *before* it
is renamed to ``dest``, so a file under its final name has always been verified. A wrong checksum is
refused with both digests shown; an HTTP error names the URL. Asked for an archive, it refuses an HTML
page (a login page, an expired link) that a server sends with status 200.

:func:`download_dataset` fetches (or takes from ``--from DIR``), verifies and extracts every archive of a
benchmark. An archive with a published checksum is verified against it before extraction. One without
is trusted on first use only after it has proven to be the archive the dataset needs: the whole archive
extracts safely and the folders and files of the dataset's layout (:data:`LAYOUTS`) are there; only then
is its digest recorded in ``archives/checksums.json`` (marked ``"source": "self-recorded (trust on first
use)"``, with the time and the URL), and later runs check the archive against it.
:func:`verify_archives` re-hashes the archives present against those digests (``fsanet data verify``),
and :func:`clear_recorded` forgets self-recorded ones so that the next download records again.

Two processes downloading the same archive into the same data root (COCO and COCO-Stuff share
``train2017.zip``) take turns: each archive has a lock file ``archives/<archive>.lock`` held while it is
downloaded, verified, extracted and recorded, and each dataset one (``<root>/.<dataset>.extract.lock``)
held while extracting and marking. A process that finds a lock taken logs that it waits for the other
process and, once it holds the lock, finds the verified archive instead of downloading it again. It waits
at most :data:`LOCK_TIMEOUT_S` seconds, or the number of seconds in the environment variable
``FSANET_LOCK_TIMEOUT_S`` (negative: no limit). The locks are ``flock`` locks (the ``filelock`` library),
so the operating system releases those of a process that dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import urllib3
from filelock import FileLock, Timeout
from tqdm import tqdm

from fsanet.data import cityscapes_site
from fsanet.data.errors import ChecksumError, DownloadError
from fsanet.io import read_json, write_json

__all__ = [
    "LAYOUTS",
    "LOCK_TIMEOUT_ENV",
    "LOCK_TIMEOUT_S",
    "RECORD",
    "SELF_RECORDED",
    "ArchiveStatus",
    "ChecksumError",
    "DownloadError",
    "Recorded",
    "clear_recorded",
    "download_dataset",
    "fetch",
    "file_digest",
    "looks_like_html",
    "lock_timeout_s",
    "parse_checksum",
    "verify_archives",
    "verify_checksum",
]

log = logging.getLogger(__name__)

ALGORITHMS = ("md5", "sha1", "sha256", "sha512")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
# URL mistakes that no retry can fix.
_BAD_URL = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
)


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"md5:0123..."`` into ``("md5", "0123...")``, validating algorithm and hex length.

    Args:
        checksum: ``"ALGO:HEX"``.

    Raises:
        ValueError: unknown algorithm or malformed digest.
    """
    algo, sep, digest = checksum.partition(":")
    algo, digest = algo.strip().lower(), digest.strip().lower()
    if not sep or algo not in ALGORITHMS:
        raise ValueError(
            f"checksum '{checksum}': expected 'ALGO:HEX' with ALGO one of {', '.join(ALGORITHMS)}"
        )
    size = hashlib.new(algo).digest_size * 2
    if len(digest) != size or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"checksum '{checksum}': a {algo} digest is {size} hexadecimal characters")
    return algo, digest


def file_digest(path: str | Path, algo: str = "sha256", progress: bool = False) -> str:
    """Hex digest of a file, read in 1 MiB blocks.

    Args:
        path: the file.
        algo: a :mod:`hashlib` algorithm name.
        progress: show a tqdm progress bar.
    """
    path = Path(path)
    h = hashlib.new(algo)
    with (
        open(path, "rb") as f,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"{algo} {path.name}",
            disable=not progress,
        ) as bar,
    ):
        while block := f.read(1 << 20):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def verify_checksum(path: str | Path, checksum: str, progress: bool = False) -> None:
    """Raise :class:`ChecksumError` (showing both digests) unless ``path`` has the given checksum.

    Args:
        path: the file.
        checksum: ``"ALGO:HEX"``.
        progress: show a tqdm progress bar while hashing.
    """
    algo, expected = parse_checksum(checksum)
    actual = file_digest(path, algo, progress)
    if actual != expected:
        raise ChecksumError(
            f"{path}: {algo} checksum mismatch: expected {expected}, got {actual} "
            "(the file is corrupt, incomplete or not the official one)"
        )


def looks_like_html(head: bytes) -> bool:
    """True if the first bytes of a file are markup (an HTML page) rather than binary archive data.

    Zip, gzip, bzip2 and xz files start with binary magic numbers, and a tar header holds NUL bytes
    within its first 512 bytes; a web page starts, after optional white space and a byte-order mark,
    with ``<`` and a letter, ``!`` (``<!DOCTYPE html>``, ``<!--``) or ``?`` (``<?xml``), and holds no NUL.

    Args:
        head: the first bytes of the file (512 or more are best).
    """
    text = head[:1024].removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n\f")
    if b"\0" in head[:512] or len(text) < 2 or text[:1] != b"<":
        return False
    second = text[1:2]
    return second.isalpha() or second in (b"!", b"?")


def _file_is_html(path: Path) -> bool:
    with open(path, "rb") as f:
        return looks_like_html(f.read(1024))


def _html_refused(url: str, name: str, why: str) -> DownloadError:
    return DownloadError(
        f"{url}: the server sent an HTML page ({why}) instead of the archive {name}, probably a login page "
        "or an expired link; open the URL in a browser, then fix the URL in the params file (or log in) "
        "and run again (nothing was kept or recorded)"
    )


def _http_error(url: str, response: requests.Response) -> DownloadError:
    code = response.status_code
    if code == 404:
        return DownloadError(f"{url}: not found (HTTP 404); check the URL in the params file")
    if code in (401, 403):
        return DownloadError(f"{url}: access denied (HTTP {code}); is a login required?")
    if 300 <= code < 400:
        where = response.headers.get("Location", "?")
        return DownloadError(f"{url}: redirected (HTTP {code}) to {where}; not logged in, or the link moved")
    return DownloadError(f"{url}: HTTP {code} {response.reason}")


def _content_range(response: requests.Response, offset: int) -> tuple[bool, int | None]:
    """Whether a 206 answer starts at ``offset``, and the total size it announces (None if unknown)."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset:
        return False, None
    return True, None if match.group(3) == "*" else int(match.group(3))


def _attempt(
    url: str,
    part: Path,
    session: requests.Session,
    timeout: float,
    chunk_size: int,
    progress: bool,
    allow_redirects: bool,
    headers: Mapping[str, str],
    refuse_html: bool = False,
) -> None:
    """One GET, appending to ``part`` from its current size. Raises on HTTP errors and short bodies.

    A server that cannot resume (it ignores the range, answers 416, or answers another range) makes the
    download start again from zero; ``part`` never gets bytes from the wrong offset.

    Args:
        url: the file's URL.
        part: the partial file.
        session: the HTTP session.
        timeout: seconds to wait for the server.
        chunk_size: bytes per write.
        progress: show a tqdm progress bar.
        allow_redirects: follow HTTP redirects.
        headers: extra request headers.
        refuse_html: raise :class:`DownloadError` (and delete ``part``) if the answer is an HTML page.
    """
    offset = part.stat().st_size if part.exists() else 0
    # Identity encoding: the bytes on disk are the file's bytes, and ranges count them.
    req_headers = {"Accept-Encoding": "identity", **headers}
    if offset:
        req_headers["Range"] = f"bytes={offset}-"
    again = (url, part, session, timeout, chunk_size, progress, allow_redirects, headers, refuse_html)
    with session.get(
        url, stream=True, timeout=timeout, allow_redirects=allow_redirects, headers=req_headers
    ) as r:
        if r.status_code == 416 and offset:
            # Nothing left to send: the partial file is already complete (the checksum decides).
            match = re.match(r"bytes\s+\*/(\d+)", r.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == offset:
                return
            log.warning("%s: server refused to resume at byte %d; restarting from zero", url, offset)
            part.unlink()
            return _attempt(*again)
        if r.status_code not in (200, 206):
            raise _http_error(url, r)
        content_type = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if refuse_html and content_type in ("text/html", "application/xhtml+xml"):
            part.unlink(missing_ok=True)
            raise _html_refused(url, part.name.removesuffix(".part"), f"Content-Type {content_type}")
        if r.status_code == 206:
            starts_at_offset, total = _content_range(r, offset)
            if not starts_at_offset:
                if not offset:
                    raise DownloadError(
                        f"{url}: server answered a request for the whole file with the range "
                        f"'{r.headers.get('Content-Range')}'; try a mirror or download it by hand (--from "
                        "DIR)"
                    )
                log.warning(
                    "%s: server answered the range request for byte %d with '%s'; restarting from zero",
                    url,
                    offset,
                    r.headers.get("Content-Range"),
                )
                part.unlink(missing_ok=True)
                return _attempt(*again)
            start = offset
        else:
            length = r.headers.get("Content-Length")
            start, total = 0, int(length) if length and length.isdigit() else None
            if offset:
                log.info("%s: server ignored the range request; downloading from the start", url)
        # The raw stream keeps the bytes exactly as served (no transparent decoding).
        blocks = r.raw.stream(chunk_size, decode_content=False)
        first = next(blocks, b"")
        if refuse_html and start == 0 and looks_like_html(first):
            part.unlink(missing_ok=True)
            raise _html_refused(url, part.name.removesuffix(".part"), "the body is an HTML document")
        with (
            open(part, "ab" if start else "wb") as f,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            f.write(first)
            bar.update(len(first))
            for block in blocks:
                f.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise requests.ConnectionError(f"connection closed after {size} of {total} bytes")


def fetch(
    url: str,
    dest: str | Path,
    checksum: str | None = None,
    session: requests.Session | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    allow_redirects: bool = True,
    headers: Mapping[str, str] | None = None,
    backoff_s: float = 1.0,
    refuse_html: bool = False,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download, and verify its checksum.

    The partial file is not locked: callers that may run in several processes at once hold a lock
    around the call (as :func:`download_dataset` does).

    Args:
        url: the file's URL.
        dest: the final path; bytes go to ``dest + '.part'`` until the file is complete and verified.
        checksum: ``"ALGO:HEX"`` (md5, sha1, sha256, sha512). None downloads without verification (the caller
            must then check the file and record a digest itself).
        session: a ``requests.Session`` (e.g. holding login cookies); a new one by default.
        retries: how many times a broken connection is resumed before giving up.
        timeout: seconds to wait for the server (connect and between bytes).
        chunk_size: bytes per write.
        progress: show a tqdm progress bar.
        allow_redirects: follow HTTP redirects (off for servers that redirect to a login page).
        headers: extra request headers.
        backoff_s: seconds before the first retry, doubled after each.
        refuse_html: the file is binary (an archive): an answer that is an HTML page (Content-Type
            text/html, or a body that starts as HTML) is refused and nothing is kept, and a partial file
            that starts as HTML is discarded rather than resumed.

    Returns:
        ``dest``.

    Raises:
        DownloadError: HTTP error or HTML page instead of the file (the message names the URL), or a
            connection that kept breaking (the partial file is kept; running again resumes it).
        ChecksumError: the complete file has another digest (both shown; the bad file is deleted).
    """
    dest = Path(dest)
    if checksum is not None:
        parse_checksum(checksum)
    if dest.exists():
        if checksum is not None:
            try:
                verify_checksum(dest, checksum)
            except ChecksumError as err:
                raise ChecksumError(f"{err}; delete it and run again to download it again") from None
        log.info("%s already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if refuse_html and part.is_file() and _file_is_html(part):
        log.warning("%s holds an HTML page, not the start of %s; downloading from zero", part, dest.name)
        part.unlink()
    own_session = session is None
    session = session or requests.Session()
    try:
        for attempt in range(retries + 1):
            try:
                _attempt(
                    url,
                    part,
                    session,
                    timeout,
                    chunk_size,
                    progress,
                    allow_redirects,
                    headers or {},
                    refuse_html,
                )
                break
            except DownloadError:
                raise
            except _BAD_URL as err:
                raise DownloadError(
                    f"{url}: not a usable URL ({type(err).__name__}); check the params file"
                ) from None
            except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
                have = part.stat().st_size if part.exists() else 0
                if attempt == retries:
                    raise DownloadError(
                        f"{url}: download interrupted after {have} bytes ({type(err).__name__}: {err}); "
                        f"run the command again to resume from {part}"
                    ) from None
                log.warning("%s: %s; resuming from byte %d", url, type(err).__name__, have)
                time.sleep(backoff_s * 2**attempt)
    finally:
        if own_session:
            session.close()
    if checksum is not None:
        try:
            verify_checksum(part, checksum)
        except ChecksumError as err:
            part.unlink()
            raise ChecksumError(f"{url}: {err}; the download was deleted") from None
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Locks shared by concurrent downloads
# --------------------------------------------------------------------------------------------
LOCK_TIMEOUT_S = 12 * 3600.0  # seconds a download waits for another process's lock (default)
LOCK_TIMEOUT_ENV = "FSANET_LOCK_TIMEOUT_S"  # environment variable overriding LOCK_TIMEOUT_S


def lock_timeout_s() -> float:
    """Seconds a download waits for a lock held by another process.

    ``$FSANET_LOCK_TIMEOUT_S`` when set, else :data:`LOCK_TIMEOUT_S` (long enough for another process
    to download an 18 GB archive). A negative value waits without limit.

    Raises:
        ValueError: the environment variable is not a number.
    """
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return LOCK_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f"{LOCK_TIMEOUT_ENV}={text!r}: expected a number of seconds (negative: wait without limit)"
        )
    return value


@contextlib.contextmanager
def _locked(path: Path, what: str, timeout: float) -> Iterator[None]:
    """Hold the file lock ``path`` (created if needed) for the block.

    Args:
        path: the lock file.
        what: what the lock protects, for the messages.
        timeout: seconds to wait for another process's lock; negative waits without limit.

    Raises:
        DownloadError: another process still holds the lock after ``timeout`` seconds (one line naming
            the lock file and what to do).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.warning("%s: waiting for another process, which holds the lock %s", what, path)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise DownloadError(
                f"{path}: another process has held this lock for more than {timeout:g} s ({what}); let it "
                f"finish, or set {LOCK_TIMEOUT_ENV} to wait longer (seconds, negative: no limit). The "
                "operating system releases the lock of a process that died, so its holder is still running "
                f"(`fuser -v {path}` shows it): stop that process if it hangs, then run again"
            ) from None
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------
# Recorded checksums (archives/checksums.json)
# --------------------------------------------------------------------------------------------
RECORD = "checksums.json"  # digests of the archives, next to them in <root>/archives
SELF_RECORDED = "self-recorded (trust on first use)"
PUBLISHED = "published in the params file"
LEGACY = "recorded by an older fsanet (origin unknown)"


@dataclass(frozen=True)
class Recorded:
    """One entry of ``archives/checksums.json``.

    Attributes:
        checksum: ``"ALGO:HEX"``.
        source: where the digest comes from: :data:`SELF_RECORDED` (an archive without a published
            checksum, recorded after it passed its checks), ``"published ..."`` (the params file, or the
            site that serves the archive), or :data:`LEGACY` (a plain entry of an older file).
        recorded_at: UTC time of recording (ISO 8601), if known.
        url: where the recorded archive came from (a ``file://`` URI for ``--from DIR``), if known.
    """

    checksum: str
    source: str
    recorded_at: str | None = None
    url: str | None = None

    @property
    def self_recorded(self) -> bool:
        """True unless a publisher gave this digest (legacy entries count as self-recorded)."""
        return not self.source.startswith("published")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read_record(archive_dir: Path) -> dict[str, Recorded]:
    """The entries of ``archive_dir/checksums.json`` (none if it does not exist).

    Raises:
        ValueError: a malformed file (one line naming it and the fix).
    """
    path = archive_dir / RECORD
    if not path.is_file():
        return {}
    fix = f"fix or delete {path} (the digests are recorded again on the next download)"
    try:
        data = read_json(path)
    except ValueError as err:
        raise ValueError(f"{err}; {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping archive names to checksums; {fix}")
    out = {}
    for name, value in data.items():
        if isinstance(value, str):
            entry = Recorded(value, LEGACY)
        elif isinstance(value, dict) and isinstance(value.get("checksum"), str):
            entry = Recorded(
                value["checksum"],
                str(value.get("source") or LEGACY),
                value.get("recorded_at"),
                value.get("url"),
            )
        else:
            raise ValueError(f"{path}: entry '{name}' has no checksum; {fix}")
        try:
            parse_checksum(entry.checksum)
        except ValueError as err:
            raise ValueError(f"{path}: entry '{name}': {err}; {fix}") from None
        out[name] = entry
    return out


def _record_lock(archive_dir: Path) -> Path:
    return archive_dir / f"{RECORD}.lock"


def _record(archive_dir: Path, name: str, entry: Recorded, lock_timeout: float) -> None:
    """Set the entry of archive ``name`` in ``checksums.json`` (read, change and write under its lock)."""
    with _locked(_record_lock(archive_dir), f"recording the digest of {name}", lock_timeout):
        entries = _read_record(archive_dir)
        entries[name] = entry
        write_json(archive_dir / RECORD, {k: asdict(v) for k, v in entries.items()})


# --------------------------------------------------------------------------------------------
# What each archive must contain (checked before a digest is trusted on first use)
# --------------------------------------------------------------------------------------------
# Per dataset and archive: the paths, relative to the archive's extract_to folder, that its extraction
# must give. A path ending in '/' is a folder that must hold something.
LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "cityscapes": {
        "gtFine_trainvaltest.zip": ("gtFine/train/", "gtFine/val/", "gtFine/test/"),
        "leftImg8bit_trainvaltest.zip": ("leftImg8bit/train/", "leftImg8bit/val/", "leftImg8bit/test/"),
    },
    "ade20k": {
        "ADEChallengeData2016.zip": (
            "ADEChallengeData2016/images/training/",
            "ADEChallengeData2016/images/validation/",
            "ADEChallengeData2016/annotations/training/",
            "ADEChallengeData2016/annotations/validation/",
        ),
    },
    "voc": {
        "VOCtrainval_11-May-2012.tar": (
            "VOCdevkit/VOC2012/JPEGImages/",
            "VOCdevkit/VOC2012/SegmentationClass/",
            "VOCdevkit/VOC2012/ImageSets/Segmentation/",
        ),
        "benchmark.tgz": (
            "benchmark_RELEASE/dataset/cls/",
            "benchmark_RELEASE/dataset/img/",
            "benchmark_RELEASE/dataset/train.txt",
            "benchmark_RELEASE/dataset/val.txt",
        ),
    },
    "coco_stuff": {
        "train2017.zip": ("train2017/",),
        "val2017.zip": ("val2017/",),
        "stuffthingmaps_trainval2017.zip": ("train2017/", "val2017/"),
    },
    "coco": {
        "train2017.zip": ("train2017/",),
        "val2017.zip": ("val2017/",),
        "annotations_trainval2017.zip": (
            "annotations/instances_train2017.json",
            "annotations/instances_val2017.json",
        ),
    },
}


def _missing_members(names: Sequence[str], required: Sequence[str]) -> list[str]:
    """The required paths (see :data:`LAYOUTS`) that no archive member provides."""
    present = {"/".join(p for p in n.split("/") if p not in ("", ".")) for n in names}
    missing = []
    for req in required:
        key = req.rstrip("/")
        if req.endswith("/"):
            found = any(n.startswith(key + "/") for n in present)
        else:
            found = key in present
        if not found:
            missing.append(req)
    return missing


def _missing_on_disk(target: Path, required: Sequence[str]) -> list[str]:
    """The required paths (see :data:`LAYOUTS`) that are not under ``target``."""
    missing = []
    for req in required:
        path = target / req.rstrip("/")
        if req.endswith("/"):
            found = path.is_dir() and next(path.iterdir(), None) is not None
        else:
            found = path.is_file()
        if not found:
            missing.append(req)
    return missing


# --------------------------------------------------------------------------------------------
# A benchmark's archives: download (or take from --from DIR), verify, extract, record
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Obtained:
    """An archive ready to be checked: its path, origin and expected checksum."""

    path: Path
    url: str  # where it came from (file:// URI for --from DIR)
    expected: str | None  # the checksum it was verified against, None if there is none
    source: str | None  # where ``expected`` was learnt if not from the params file or the record
    downloaded: bool  # True if the file lies in <root>/archives (ours to delete), False for --from DIR


class _DatasetDownload:
    """One :func:`download_dataset` call: its options, the Cityscapes session and the per-archive steps.

    Args:
        name: the benchmark.
        data_root: the data folder.
        from_dir: take the archives from this folder instead of the network.
        progress: progress bars.
        retries: resumes of a broken connection per URL.
        timeout: seconds to wait for a server.
        lock_timeout: seconds to wait for another process's lock (negative: no limit).
        limits: ``data.extract`` (sizes, ratios, free disk); None: the defaults.
    """

    def __init__(
        self,
        name: str,
        data_root: Path,
        from_dir: Path | None,
        progress: bool,
        retries: int,
        timeout: float,
        lock_timeout: float,
        limits: Any = None,
    ) -> None:
        self.name = name
        self.limits = limits
        self.data_root = data_root
        self.archive_dir = data_root / "archives"
        self.extract_lock = data_root / f".{name}.extract.lock"
        self.from_dir = from_dir
        self.progress = progress
        self.retries = retries
        self.timeout = timeout
        self.lock_timeout = lock_timeout
        self.session: requests.Session | None = None
        self.listed: dict[str, int] = {}

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def _done(self, file_name: str, target: Path, published: str | None) -> bool:
        """True if a verified extraction of the archive is already marked in ``target``."""
        from fsanet.data.archive import is_extracted

        entry = _read_record(self.archive_dir).get(file_name)
        expected = published or (entry.checksum if entry else None)
        if expected and is_extracted(file_name, target, expected):
            log.info("%s: %s already verified and extracted into %s", self.name, file_name, target)
            return True
        return False

    def archive(self, a: Mapping[str, Any]) -> Path:
        """Fetch (or take), verify, extract and record one archive; returns its extraction target."""
        file_name = a["name"]
        target = self.data_root / (a.get("extract_to") or ".")
        published = a.get("checksum") or None
        if published:
            try:
                parse_checksum(published)
            except ValueError as err:
                raise ValueError(f"{self.name}: data.download entry {file_name}: {err}") from None
        if self._done(file_name, target, published):
            return target
        try:
            with _locked(
                self.archive_dir / f"{file_name}.lock", f"{self.name}: {file_name}", self.lock_timeout
            ):
                # Another process may have finished this archive while this one waited for the lock.
                if not self._done(file_name, target, published):
                    self._locked_archive(a, target, published)
        except (FileNotFoundError, PermissionError):
            raise
        except requests.RequestException as err:
            raise DownloadError(
                f"{self.name}: {file_name}: {type(err).__name__}: {err}; check the network and run again"
            ) from None
        except OSError as err:
            raise DownloadError(
                f"{self.name}: {file_name}: {err}; fix the disk problem under {self.data_root} (space, "
                "permissions) and run again (a partial download resumes)"
            ) from None
        return target

    def _locked_archive(self, a: Mapping[str, Any], target: Path, published: str | None) -> None:
        file_name = a["name"]
        entry = _read_record(self.archive_dir).get(file_name)
        expected = published or (entry.checksum if entry else None)
        try:
            got = self._obtain(a, expected)
        except ChecksumError as err:
            if published or entry is None or not entry.self_recorded:
                raise
            raise ChecksumError(
                f"{err}; the expected digest was recorded on first use ({entry.source}, "
                f"{entry.recorded_at or 'date unknown'}): if this archive is the official one, run "
                f"`fsanet data verify {self.name} --clear --archive {file_name}` and download again"
            ) from None
        if got.expected is None:
            self._trust_on_first_use(a, got, target)
            return
        record = None
        if entry is None or entry.checksum != got.expected:
            record = Recorded(got.expected, got.source or PUBLISHED, _now(), got.url)
        self._extract(
            file_name, got.path, target, got.expected, record, unpacked_bytes=a.get("unpacked_bytes")
        )

    def _obtain(self, a: Mapping[str, Any], expected: str | None) -> _Obtained:
        """The archive from --from DIR, <root>/archives or the network, verified if a checksum is known."""
        file_name = a["name"]
        source = None
        package_id = None
        if a.get("package_id") is not None:  # Cityscapes: login-protected packages
            site = a.get("site") or cityscapes_site.SITE
            if self.from_dir is None or (expected is None and cityscapes_site.has_credentials()):
                package_id, site_md5 = self._cityscapes_package(
                    site, file_name, a["package_id"], expected is None
                )
                if expected is None:
                    expected, source = site_md5, f"published by {site} (package {package_id})"
            where = f"{site} (package {a['package_id']})"
        elif a.get("url"):
            where = a["url"]
        else:
            raise DownloadError(
                f"{self.name}: archive {file_name} has no url in data.download of its params file"
            )
        if self.from_dir is not None:
            path = Path(self.from_dir) / file_name
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: archive not found; download {file_name} from {where} into {self.from_dir}"
                )
            if _file_is_html(path):
                raise DownloadError(
                    f"{path}: an HTML page, not the archive {file_name} (probably a login page or an expired "
                    f"link saved under the archive's name); download {file_name} again from {where} into "
                    f"{self.from_dir} (nothing was recorded)"
                )
            if expected:
                verify_checksum(path, expected, self.progress)
            return _Obtained(path, path.resolve().as_uri(), expected, source, downloaded=False)
        dest = self.archive_dir / file_name
        if dest.is_file() and _file_is_html(dest):
            log.warning(
                "%s is an HTML page saved by an earlier run, not an archive; downloading it again", dest
            )
            dest.unlink()
        if package_id is not None:
            url = cityscapes_site.package_url(site, package_id)
            path = fetch(
                url,
                dest,
                expected,
                session=self.session,
                retries=self.retries,
                timeout=self.timeout,
                progress=self.progress,
                allow_redirects=False,
                refuse_html=True,
            )
        else:
            path, url = _fetch_any(
                [a["url"], *(a.get("mirrors") or [])],
                dest,
                expected,
                self.retries,
                self.timeout,
                self.progress,
            )
        return _Obtained(path, url, expected, source, downloaded=True)

    def _cityscapes_package(
        self, site: str, file_name: str, package_id: int, want_md5: bool
    ) -> tuple[int, str | None]:
        """Log in once, and return the package's id as the site lists it and, if asked, the MD5 it serves."""
        try:
            if self.session is None:
                self.session = cityscapes_site.login(site, self.timeout)
                self.listed = cityscapes_site.package_ids(self.session, site, self.timeout)
            pid = cityscapes_site.resolve_package(self.listed, file_name, package_id)
            md5 = (
                cityscapes_site.package_checksum(self.session, site, pid, self.timeout) if want_md5 else None
            )
        except requests.RequestException as err:
            raise DownloadError(
                f"{site}: {type(err).__name__} while asking for {file_name}; check the network and "
                "data.download[].site, then run again"
            ) from None
        if md5 is not None:
            try:
                parse_checksum(md5)
            except ValueError:
                raise DownloadError(
                    f"{site}: what the site serves as the MD5 of package {pid} ({file_name}) is not an MD5 "
                    "digest; not logged in, or the site changed: download it by hand and use --from DIR"
                ) from None
            log.info("%s: the site publishes %s for %s", self.name, md5, file_name)
        return pid, md5

    def _trust_on_first_use(self, a: Mapping[str, Any], got: _Obtained, target: Path) -> None:
        """Check an archive that has no published checksum, extract it, and only then record its digest.

        The archive must list the paths :data:`LAYOUTS` gives for it, extract safely as a whole, and
        give those paths under ``target``. A downloaded archive that fails is deleted; one from --from DIR
        is left alone. Either way nothing is recorded.
        """
        from fsanet.data.archive import ArchiveError, archive_members

        file_name, path = a["name"], got.path
        required = LAYOUTS.get(self.name, {}).get(file_name)
        if required is None:
            raise DownloadError(
                f"{self.name}: {file_name} has no published checksum and no known layout to check it "
                "against, so its digest cannot be trusted on first use; pin its checksum as "
                "data.download[].checksum in the params file"
            )
        where = a.get("url") or f"{a.get('site')} (package {a.get('package_id')})"
        if got.downloaded:
            fix = (
                f"{path} was deleted: check {got.url}, or download {file_name} from {where} by hand "
                "and use --from DIR"
            )
        else:
            fix = f"replace {path} with {file_name} from {where}"
        digest = f"sha256:{file_digest(path, 'sha256', self.progress)}"
        try:
            missing = _missing_members([m.name for m in archive_members(path)], required)
            if missing:
                raise ArchiveError(
                    f"{path}: no {', '.join(missing)} inside, which the {self.name} layout needs from "
                    f"{file_name}"
                )
            record = Recorded(digest, SELF_RECORDED, _now(), got.url)
            self._extract(
                file_name, path, target, digest, record, required, unpacked_bytes=a.get("unpacked_bytes")
            )
        except ArchiveError as err:
            if got.downloaded:
                path.unlink(missing_ok=True)
            message = f"{err}; its digest was not recorded; {fix}"
            try:
                refused = type(err)(message)
            except TypeError:
                refused = ArchiveError(message)
            raise refused from None
        log.warning(
            "%s: %s has no published checksum; it extracted safely and has the dataset's layout, so its "
            "digest %s is now recorded in %s (self-recorded, trust on first use) and checked from now on "
            "(pin it as data.download[].checksum in params/data/%s.yaml)",
            self.name,
            file_name,
            digest,
            self.archive_dir / RECORD,
            self.name,
        )

    def _extract(
        self,
        file_name: str,
        path: Path,
        target: Path,
        digest: str,
        record: Recorded | None,
        required: Sequence[str] | None = None,
        unpacked_bytes: int | None = None,
    ) -> None:
        """Extract under the dataset's lock, check ``required`` paths, then record the digest."""
        from fsanet.data.archive import ArchiveError, extraction_marker, safe_extract

        with _locked(self.extract_lock, f"{self.name}: extraction into {target}", self.lock_timeout):
            log.info("%s: extracting %s into %s", self.name, file_name, target)
            safe_extract(
                path,
                target,
                digest=digest,
                progress=self.progress,
                limits=self.limits,
                unpacked_bytes=unpacked_bytes,
            )
            if required is not None:
                missing = _missing_on_disk(target, required)
                if missing:
                    extraction_marker(path, target).unlink(missing_ok=True)
                    raise ArchiveError(
                        f"{path}: extracting it into {target} gave no {', '.join(missing)}, which the "
                        f"{self.name} layout needs"
                    )
            if record is not None:
                _record(self.archive_dir, file_name, record, self.lock_timeout)


def download_dataset(
    name: str,
    archives: Sequence[Mapping[str, Any]],
    data_root: str | Path = "data",
    from_dir: str | Path | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    lock_timeout: float | None = None,
    limits: Any = None,
) -> list[Path]:
    """Fetch, verify and extract every archive of a benchmark (``fsanet data download NAME``).

    Archives go to ``<data_root>/archives/`` (shared, so COCO and COCO-Stuff download ``train2017.zip``
    once) and are extracted into ``<data_root>/<extract_to>``. An archive with a published checksum (the
    params file's, or the one the Cityscapes site serves) is verified before extraction. One without is
    extracted only if it lists the paths of its dataset's layout (:data:`LAYOUTS`); its digest is
    recorded in ``archives/checksums.json`` (self-recorded, with time and URL) only after the whole
    archive extracted safely and those paths exist, and it is checked against that digest from then on.
    A rerun skips archives whose verified extraction is already marked. Archive and dataset locks let
    two processes run this at once (see the module documentation).

    Args:
        name: the benchmark (a key of :data:`LAYOUTS` for archives without a published checksum).
        archives: ``data.download`` entries (``name``, ``url``, ``mirrors``, ``checksum``, ``extract_to``,
            ``package_id``, ``site``), see :class:`fsanet.config.ArchiveConfig`.
        data_root: the data folder.
        from_dir: take the archives from this folder (downloaded by hand) instead of the network.
        progress: progress bars.
        retries: resumes of a broken connection per URL.
        timeout: seconds to wait for a server.
        lock_timeout: seconds to wait for another process's lock; None: :func:`lock_timeout_s`.
        limits: ``data.extract`` (:class:`fsanet.config.ExtractConfig`): size, ratio and free-disk
            limits against decompression bombs; None: the defaults. Each archive's ``unpacked_bytes``,
            when set, bounds its total uncompressed size.

    Returns:
        The extraction targets.

    Raises:
        DownloadError / ChecksumError / FileNotFoundError / ArchiveError: one line with the file or URL
            and what to do.
    """
    if not archives:
        raise DownloadError(f"{name}: no archives listed under data.download in its params file")
    job = _DatasetDownload(
        name,
        Path(data_root),
        None if from_dir is None else Path(from_dir),
        progress,
        retries,
        timeout,
        lock_timeout_s() if lock_timeout is None else lock_timeout,
        limits,
    )
    try:
        return [job.archive(a) for a in archives]
    finally:
        job.close()


def _fetch_any(
    urls: Sequence[str], dest: Path, checksum: str | None, retries: int, timeout: float, progress: bool
) -> tuple[Path, str]:
    """:func:`fetch` an archive from the first URL that works (HTML refused); a checksum mismatch is final.

    Returns:
        The path and the URL it came from.
    """
    errors = []
    for url in urls:
        try:
            path = fetch(
                url, dest, checksum, retries=retries, timeout=timeout, progress=progress, refuse_html=True
            )
            return path, url
        except ChecksumError:
            raise
        except DownloadError as err:
            errors.append(str(err))
            log.warning("%s", err)
    raise DownloadError("; ".join(errors) if len(errors) > 1 else errors[0])


# --------------------------------------------------------------------------------------------
# fsanet data verify
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveStatus:
    """One archive's line in :func:`verify_archives`.

    Attributes:
        archive: the archive's file name.
        status: ``ok`` (matches its published checksum), ``self-recorded`` (matches the digest recorded
            on first use), ``mismatch``, ``missing`` (not in ``<root>/archives``) or ``unverified`` (no
            checksum known yet).
        detail: digests, their source, and what to do.
    """

    archive: str
    status: str
    detail: str


def _select(name: str, archives: Sequence[Mapping[str, Any]], only: str | None) -> list[str]:
    names = list(dict.fromkeys(a["name"] for a in archives))
    if not names:
        raise DownloadError(f"{name}: no archives listed under data.download in its params file")
    if only is None:
        return names
    if only not in names:
        raise ValueError(f"--archive {only}: not an archive of {name}; its archives are {', '.join(names)}")
    return [only]


def _provenance(entry: Recorded) -> str:
    parts = [entry.source]
    if entry.recorded_at:
        parts.append(f"at {entry.recorded_at}")
    if entry.url:
        parts.append(f"from {entry.url}")
    return " ".join(parts)


def verify_archives(
    name: str,
    archives: Sequence[Mapping[str, Any]],
    data_root: str | Path = "data",
    only: str | None = None,
    progress: bool = False,
) -> list[ArchiveStatus]:
    """Re-hash each archive of a benchmark found in ``<data_root>/archives`` against its checksum.

    The checksum is the params file's when it publishes one, else the entry of ``checksums.json``
    (published by a site, or self-recorded on first use).

    Args:
        name: the benchmark.
        archives: its ``data.download`` entries.
        data_root: the data folder.
        only: check only this archive (a file name).
        progress: progress bars while hashing.

    Returns:
        One :class:`ArchiveStatus` per archive, in the params file's order.

    Raises:
        ValueError: ``only`` is not one of the archives, or a malformed checksum or record (named).
    """
    archive_dir = Path(data_root) / "archives"
    recorded = _read_record(archive_dir)
    published = {a["name"]: a.get("checksum") or None for a in archives}
    out = []
    for file_name in _select(name, archives, only):
        path = archive_dir / file_name
        entry = Recorded(published[file_name], PUBLISHED) if published[file_name] else recorded.get(file_name)
        if not path.is_file():
            out.append(
                ArchiveStatus(
                    file_name,
                    "missing",
                    f"{path} not found; `fsanet data download {name}` fetches it (archives given with "
                    "--from DIR are used where they are, not copied)",
                )
            )
            continue
        if entry is None:
            out.append(
                ArchiveStatus(
                    file_name,
                    "unverified",
                    f"no published or recorded checksum; `fsanet data download {name}` records one once "
                    "the archive has passed its checks",
                )
            )
            continue
        try:
            algo, expected = parse_checksum(entry.checksum)
        except ValueError as err:
            raise ValueError(f"{name}: {file_name}: {err}") from None
        actual = file_digest(path, algo, progress)
        if actual == expected:
            status = "self-recorded" if entry.self_recorded else "ok"
            out.append(ArchiveStatus(file_name, status, f"{algo} {actual}, {_provenance(entry)}"))
        elif entry.self_recorded:
            out.append(
                ArchiveStatus(
                    file_name,
                    "mismatch",
                    f"{algo} expected {expected} ({_provenance(entry)}), got {actual}; if {path} is the "
                    f"official archive, run `fsanet data verify {name} --clear --archive {file_name}` and "
                    "download again, else delete it",
                )
            )
        else:
            out.append(
                ArchiveStatus(
                    file_name,
                    "mismatch",
                    f"{algo} expected {expected} ({_provenance(entry)}), got {actual}; {path} is corrupt "
                    "or not the official archive: delete it and download again",
                )
            )
    return out


def clear_recorded(
    name: str,
    archives: Sequence[Mapping[str, Any]],
    data_root: str | Path = "data",
    only: str | None = None,
    lock_timeout: float | None = None,
) -> list[str]:
    """Forget the self-recorded digests of a benchmark's archives, so that the next download records again.

    Digests a publisher gave (the params file, the Cityscapes site) are kept; entries written by older
    versions, whose origin is unknown, are removed.

    Args:
        name: the benchmark.
        archives: its ``data.download`` entries.
        data_root: the data folder.
        only: clear only this archive's digest (a file name).
        lock_timeout: seconds to wait for another process's lock; None: :func:`lock_timeout_s`.

    Returns:
        The archives whose digest was removed.
    """
    archive_dir = Path(data_root) / "archives"
    names = _select(name, archives, only)
    if not (archive_dir / RECORD).is_file():
        return []
    wait = lock_timeout_s() if lock_timeout is None else lock_timeout
    with _locked(_record_lock(archive_dir), f"clearing digests in {RECORD}", wait):
        entries = _read_record(archive_dir)
        gone = [n for n in names if n in entries and entries[n].self_recorded]
        if gone:
            for n in gone:
                del entries[n]
            write_json(archive_dir / RECORD, {k: asdict(v) for k, v in entries.items()})
    for n in gone:
        log.info("%s: forgot the recorded digest of %s", name, n)
    return gone
