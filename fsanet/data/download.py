"""Streaming HTTP download with resume, a progress bar and checksum verification.

:func:`fetch` writes ``<dest>.part`` and asks the server for the missing bytes (HTTP ``Range``) when a
partial file is already there; it retries a broken connection from where it stopped. The finished
file is checked against its checksum *before* it is renamed to ``dest``, so a file under its final
name has always been verified. A wrong checksum is refused with both digests shown; an HTTP error
names the URL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
import urllib3
from tqdm import tqdm

from fsanet.data.download_errors import ChecksumError, DownloadError
from fsanet.io import read_json, write_json

__all__ = [
    "ChecksumError",
    "DownloadError",
    "download_dataset",
    "fetch",
    "file_digest",
    "parse_checksum",
    "verify_checksum",
]

log = logging.getLogger(__name__)

ALGORITHMS = ("md5", "sha1", "sha256", "sha512")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"md5:0123..."`` into ``("md5", "0123...")``, validating algorithm and hex length.

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
    """Hex digest of a file, read in 1 MiB blocks."""
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
    """Raise :class:`ChecksumError` (showing both digests) unless ``path`` has the given checksum."""
    algo, expected = parse_checksum(checksum)
    actual = file_digest(path, algo, progress)
    if actual != expected:
        raise ChecksumError(
            f"{path}: {algo} checksum mismatch: expected {expected}, got {actual} "
            "(the file is corrupt, incomplete or not the official one)"
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


def _start(part: Path, response: requests.Response, offset: int) -> tuple[int, int | None]:
    """Where the body of ``response`` starts in the file, and the file's total size if known."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise DownloadError(
                f"{response.url}: server answered the range request for byte {offset} with "
                f"'{response.headers.get('Content-Range')}'; delete {part} and try again"
            )
        total = match.group(3)
        return offset, None if total == "*" else int(total)
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _attempt(
    url: str,
    part: Path,
    session: requests.Session,
    timeout: float,
    chunk_size: int,
    progress: bool,
    allow_redirects: bool,
    headers: Mapping[str, str],
) -> None:
    """One GET, appending to ``part`` from its current size. Raises on HTTP errors and short bodies."""
    offset = part.stat().st_size if part.exists() else 0
    req_headers = dict(headers)
    if offset:
        req_headers["Range"] = f"bytes={offset}-"
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
            return _attempt(url, part, session, timeout, chunk_size, progress, allow_redirects, headers)
        if r.status_code not in (200, 206):
            raise _http_error(url, r)
        start, total = _start(part, r, offset)
        if start == 0 and offset:
            log.info("%s: server ignored the range request; downloading from the start", url)
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
            # The raw stream keeps the bytes exactly as served (no transparent gzip decoding).
            for block in r.raw.stream(chunk_size, decode_content=False):
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
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download, and verify its checksum.

    Args:
        url: the file's URL.
        dest: the final path; bytes go to ``dest + '.part'`` until the file is complete and verified.
        checksum: ``"ALGO:HEX"`` (md5, sha1, sha256, sha512). None downloads without verification (the caller
            must then record and check a digest itself).
        session: a ``requests.Session`` (e.g. holding login cookies); a new one by default.
        retries: how many times a broken connection is resumed before giving up.
        timeout: seconds to wait for the server (connect and between bytes).
        chunk_size: bytes per write.
        progress: show a tqdm progress bar.
        allow_redirects: follow HTTP redirects (off for servers that redirect to a login page).
        headers: extra request headers.
        backoff_s: seconds before the first retry, doubled after each.

    Returns:
        ``dest``.

    Raises:
        DownloadError: HTTP error (the message names the URL) or a connection that kept breaking
            (the partial file is kept; running again resumes it).
        ChecksumError: the complete file has another digest (both shown; the bad file is deleted).
    """
    dest = Path(dest)
    if checksum is not None:
        parse_checksum(checksum)
    if dest.exists():
        if checksum is not None:
            verify_checksum(dest, checksum)
        log.info("%s already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own_session = session is None
    session = session or requests.Session()
    try:
        for attempt in range(retries + 1):
            try:
                _attempt(url, part, session, timeout, chunk_size, progress, allow_redirects, headers or {})
                break
            except DownloadError:
                raise
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
# A benchmark's archives: download (or take from --from DIR), verify, extract
# --------------------------------------------------------------------------------------------
RECORD = "checksums.json"  # digests recorded for archives without a published checksum


def _recorded(archive_dir: Path) -> dict[str, str]:
    path = archive_dir / RECORD
    return dict(read_json(path)) if path.is_file() else {}


def _record(archive_dir: Path, name: str, checksum: str) -> None:
    data = _recorded(archive_dir)
    data[name] = checksum
    write_json(archive_dir / RECORD, data)


def download_dataset(
    name: str,
    archives: Sequence[Mapping[str, Any]],
    data_root: str | Path = "data",
    from_dir: str | Path | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch, verify and extract every archive of a benchmark (``fsanet data download NAME``).

    Archives go to ``<data_root>/archives/`` (shared, so COCO and COCO-Stuff download ``train2017.zip``
    once) and are extracted into ``<data_root>/<extract_to>``. The checksum is verified before
    extraction; an archive without a published one has its first digest recorded in
    ``archives/checksums.json`` (with a warning) and checked against it from then on. A rerun skips
    archives whose verified extraction is already recorded.

    Args:
        name: the benchmark (used in messages).
        archives: ``data.download`` entries (``name``, ``url``, ``mirrors``, ``checksum``, ``extract_to``,
            ``package_id``, ``site``), see :class:`fsanet.config.ArchiveConfig`.
        data_root: the data folder.
        from_dir: take the archives from this folder (downloaded by hand) instead of the network.
        progress: progress bars.
        retries: resumes of a broken connection per URL.
        timeout: seconds to wait for a server.

    Returns:
        The extraction targets.

    Raises:
        DownloadError / ChecksumError / FileNotFoundError / ArchiveError: with the file or URL named.
    """
    from fsanet.data.archive import is_extracted, safe_extract

    if not archives:
        raise DownloadError(f"{name}: no archives listed under data.download in its params file")
    data_root = Path(data_root)
    archive_dir = data_root / "archives"
    session, listed = None, {}
    targets = []
    try:
        for a in archives:
            file_name = a["name"]
            target = data_root / (a.get("extract_to") or ".")
            expected = a.get("checksum") or _recorded(archive_dir).get(file_name)
            if expected and is_extracted(file_name, target, expected):
                log.info("%s: %s already verified and extracted into %s", name, file_name, target)
                targets.append(target)
                continue
            if a.get("package_id") is not None:  # Cityscapes: login-protected packages
                from fsanet.data import cityscapes

                site = a.get("site") or cityscapes.SITE
                if from_dir is None or (expected is None and cityscapes.has_credentials()):
                    if session is None:
                        session = cityscapes.login(site, timeout)
                        listed = cityscapes.package_ids(session, site, timeout)
                    package_id = cityscapes.resolve_package(listed, file_name, a["package_id"])
                    if expected is None:
                        expected = cityscapes.package_checksum(session, site, package_id, timeout)
                        log.info("%s: the site publishes %s for %s", name, expected, file_name)
            if from_dir is not None:
                path = Path(from_dir) / file_name
                if not path.is_file():
                    where = a.get("url") or f"{a.get('site')} (package {a.get('package_id')})"
                    raise FileNotFoundError(
                        f"{path}: archive not found; download {file_name} from {where} into {from_dir}"
                    )
                if expected:
                    verify_checksum(path, expected, progress)
            elif a.get("package_id") is not None:
                path = fetch(
                    cityscapes.package_url(site, package_id),
                    archive_dir / file_name,
                    expected,
                    session=session,
                    retries=retries,
                    timeout=timeout,
                    progress=progress,
                    allow_redirects=False,
                )
            else:
                path = _fetch_any(
                    [a["url"], *(a.get("mirrors") or [])],
                    archive_dir / file_name,
                    expected,
                    retries,
                    timeout,
                    progress,
                )
            if expected is None:
                expected = f"sha256:{file_digest(path, 'sha256', progress)}"
                _record(archive_dir, file_name, expected)
                log.warning(
                    "%s: %s has no published checksum; recorded %s in %s and will check it from now on "
                    "(pin it as data.download[].checksum in params/data/%s.yaml)",
                    name,
                    file_name,
                    expected,
                    archive_dir / RECORD,
                    name,
                )
            else:
                _record(archive_dir, file_name, expected)
            targets.append(safe_extract(path, target, digest=expected, progress=progress))
    finally:
        if session is not None:
            session.close()
    return targets


def _fetch_any(
    urls: Sequence[str], dest: Path, checksum: str | None, retries: int, timeout: float, progress: bool
) -> Path:
    """:func:`fetch` from the first URL that works; a checksum mismatch is final."""
    errors = []
    for url in urls:
        try:
            return fetch(url, dest, checksum, retries=retries, timeout=timeout, progress=progress)
        except ChecksumError:
            raise
        except DownloadError as err:
            errors.append(str(err))
            log.warning("%s", err)
    raise DownloadError("; ".join(errors) if len(errors) > 1 else errors[0])
