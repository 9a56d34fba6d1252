"""Downloads from a local HTTP server on 127.0.0.1: resume, checksums, 404, archives, Cityscapes login."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fakes import ARCHIVES, pack_fake_archives
from omegaconf import OmegaConf

from fsanet.cli import main
from fsanet.config import load_config
from fsanet.data import cityscapes_site as site
from fsanet.data.archive import UnsafeArchiveError
from fsanet.data.download import (
    RECORD,
    SELF_RECORDED,
    ChecksumError,
    DownloadError,
    download_dataset,
    fetch,
    file_digest,
    parse_checksum,
    verify_checksum,
)
from fsanet.data.imageio import read_label

USER, PASSWORD = "alice@example.org", "s3cret-Pa55word"
PARAMS = Path(__file__).resolve().parent.parent / "params" / "data"


# --------------------------------------------------------------------------------------------
# A small local server: static files with Range support, failure injection, a Cityscapes-like login
# --------------------------------------------------------------------------------------------
class FakeServer:
    """Threaded HTTP server on 127.0.0.1 with Range support; it shuts itself down after ``lifetime_s``."""

    def __init__(self, lifetime_s: float = 120.0):
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()  # first GET of these paths sends half the body and hangs up
        self.no_range = False
        self.bad_range = False  # answer every range request with the whole file as a 206 from byte 0
        self.content_types: dict[str, str] = {}  # path -> Content-Type of a 200 answer (default octet-stream)
        self.throttle_s = 0.0  # pause after each block of `block` bytes of a body (a slow server)
        self.block = 1 << 16
        self.packages: dict[int, tuple[str, bytes]] = {}  # Cityscapes package id -> (name, bytes)
        self.md5_override: dict[int, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.logins: list[dict[str, list[str]]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, *args):  # keep the test output clean
                pass

            def _record(self):
                with server._lock:
                    server.requests.append((self.command, self.path, self.headers.get("Range")))

            def _send(self, code, body=b"", headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not server.throttle_s:
                    self.wfile.write(body)
                    return
                for i in range(0, len(body), server.block):
                    self.wfile.write(body[i : i + server.block])
                    self.wfile.flush()
                    time.sleep(server.throttle_s)

            def _serve_bytes(self, key, data):
                rng = self.headers.get("Range")
                if rng and server.bad_range:
                    return self._send(206, data, {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
                if rng and not server.no_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self._send(416, headers={"Content-Range": f"bytes */{len(data)}"})
                    body = data[start:]
                    return self._send(
                        206, body, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                    )
                if key in server.cut_once:
                    server.cut_once.discard(key)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(
                    200, data, {"Content-Type": server.content_types.get(key, "application/octet-stream")}
                )

            def _logged_in(self):
                return "session=ok" in (self.headers.get("Cookie") or "")

            def do_GET(self):
                self._record()
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path == "/login":
                    return self._send(200, b"<form>login</form>", {"Set-Cookie": "csrf=1; Path=/"})
                if url.path in ("/md5-sum/", "/file-handling/", "/downloads/"):
                    if not self._logged_in():
                        return self._send(302, headers={"Location": "/login"})
                    if url.path == "/downloads/":
                        listing = [
                            {"name": n, "packageID": str(i), "size": "1 KB", "thirdparty": "0"}
                            for i, (n, _) in server.packages.items()
                        ]
                        return self._send(200, json.dumps(listing).encode())
                    pid = int(query["packageID"][0])
                    if pid not in server.packages:
                        return self._send(404, b"no such package")
                    name, data = server.packages[pid]
                    if url.path == "/md5-sum/":
                        md5 = server.md5_override.get(pid, hashlib.md5(data).hexdigest())
                        return self._send(200, f"{md5}  {name}\n".encode())
                    return self._serve_bytes(url.path + url.query, data)
                if url.path not in server.files:
                    return self._send(404, b"not found")
                return self._serve_bytes(url.path, server.files[url.path])

            def do_POST(self):
                self._record()
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                server.logins.append(form)
                ok = (
                    form.get("username") == [USER]
                    and form.get("password") == [PASSWORD]
                    and form.get("submit") == ["Login"]
                )
                if self.path == "/login" and ok:
                    return self._send(302, headers={"Location": "/", "Set-Cookie": "session=ok; Path=/"})
                return self._send(200, b"<form>wrong credentials</form>")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client hanging up early is expected here
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._timer = threading.Timer(lifetime_s, self.httpd.shutdown)
        self._timer.daemon = True

    def __enter__(self):
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each GET of ``path``."""
        return [r for m, p, r in self.requests if m == "GET" and urllib.parse.urlsplit(p).path == path]


@pytest.fixture
def server():
    with FakeServer() as s:
        yield s


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# checksums
# --------------------------------------------------------------------------------------------
def test_parse_checksum():
    assert parse_checksum("MD5:" + "A" * 32) == ("md5", "a" * 32)
    assert parse_checksum("sha256:" + "0" * 64) == ("sha256", "0" * 64)
    for bad in ("abc", "crc32:1234", "md5:123", "sha1:" + "g" * 40):
        with pytest.raises(ValueError, match="checksum"):
            parse_checksum(bad)


def test_file_digest_matches_hashlib(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(PAYLOAD)
    assert file_digest(p, "sha256") == hashlib.sha256(PAYLOAD).hexdigest()
    assert file_digest(p, "md5") == hashlib.md5(PAYLOAD).hexdigest()
    verify_checksum(p, md5(PAYLOAD))
    with pytest.raises(ChecksumError):
        verify_checksum(p, md5(b"other"))


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------
def test_fetch_downloads_and_verifies(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = fetch(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert server.gets("/f.bin") == [None]
    fetch(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), progress=False)  # present + verified
    assert len(server.gets("/f.bin")) == 1


def test_fetch_cut_halfway_then_resumed(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_once.add("/f.bin")
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"interrupted after \d+ bytes.*run the command again"):
        fetch(f"{server.url}/f.bin", dest, md5(PAYLOAD), retries=0, progress=False)
    part = tmp_path / "f.bin.part"
    have = part.stat().st_size
    assert 0 < have < len(PAYLOAD) and not dest.exists()
    assert part.read_bytes() == PAYLOAD[:have]
    fetch(f"{server.url}/f.bin", dest, md5(PAYLOAD), retries=0, progress=False)
    assert server.gets("/f.bin") == [None, f"bytes={have}-"]  # the second request asked only for the rest
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_fetch_retries_resume_automatically(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_once.add("/f.bin")
    dest = fetch(
        f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), retries=2, backoff_s=0, progress=False
    )
    assert dest.read_bytes() == PAYLOAD
    ranges = server.gets("/f.bin")
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")


def test_fetch_server_without_range_restarts(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.no_range = True
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not be kept")
    dest = fetch(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_part_already_complete(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    dest = fetch(f"{server.url}/f.bin", tmp_path / "f.bin", md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.gets("/f.bin") == [f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing left to send


def test_fetch_wrong_checksum_refused_with_both_digests(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    wrong = md5(b"the official file")
    with pytest.raises(ChecksumError) as err:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", wrong, progress=False)
    msg = str(err.value)
    assert wrong.split(":")[1] in msg and hashlib.md5(PAYLOAD).hexdigest() in msg
    assert f"{server.url}/f.bin" in msg
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_fetch_existing_file_with_wrong_digest_refused(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"corrupt")
    with pytest.raises(ChecksumError, match="expected"):
        fetch("http://127.0.0.1:9/never-contacted", tmp_path / "f.bin", md5(PAYLOAD), progress=False)


def test_fetch_404_names_the_url(server, tmp_path):
    url = f"{server.url}/nope.zip"
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "nope.zip", None, progress=False)
    assert url in str(err.value) and "404" in str(err.value)
    assert not (tmp_path / "nope.zip").exists()


# --------------------------------------------------------------------------------------------
# download_dataset with fake official archives
# --------------------------------------------------------------------------------------------
def entries_for(name: str, server: FakeServer, archives: dict[str, Path]) -> list[dict]:
    """The params file's download entries, pointed at the local server with the fakes' checksums."""
    entries = OmegaConf.to_container(load_config([PARAMS / f"{name}.yaml"]).data.download)
    for e in entries:
        data = archives[e["name"]].read_bytes()
        server.files[f"/files/{e['name']}"] = data
        e["url"], e["mirrors"] = f"{server.url}/files/{e['name']}", []
        if e["checksum"] is not None:
            e["checksum"] = md5(data)
    return entries


@pytest.mark.parametrize("name", ["ade20k", "voc", "coco_stuff", "coco"])
def test_download_dataset_extracts_the_official_layout(server, tmp_path, name, caplog):
    archives = pack_fake_archives(name, tmp_path / "fakes")
    entries = entries_for(name, server, archives)
    data_root = tmp_path / "data"
    with caplog.at_level(logging.WARNING):
        targets = download_dataset(name, entries, data_root, progress=False)
    assert targets == [data_root / e["extract_to"] for e in entries]
    expected_files = {
        "ade20k": [
            "ade/ADEChallengeData2016/images/training/ADE_train_00000001.jpg",
            "ade/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png",
            "ade/ADEChallengeData2016/objectInfo150.txt",
        ],
        "voc": [
            "VOCdevkit/VOC2012/JPEGImages/2009_000002.jpg",
            "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png",
            "VOCdevkit/VOC2012/ImageSets/Segmentation/trainval.txt",
            "VOCdevkit/benchmark_RELEASE/dataset/cls/2008_000001.mat",
            "VOCdevkit/benchmark_RELEASE/dataset/train.txt",
        ],
        "coco_stuff": [
            "coco_stuff164k/images/train2017/000000000025.jpg",
            "coco_stuff164k/images/val2017/000000000009.jpg",
            "coco_stuff164k/annotations/val2017/000000000009.png",
        ],
        "coco": ["coco/train2017/000000000025.jpg", "coco/annotations/instances_val2017.json"],
    }[name]
    for rel in expected_files:
        assert (data_root / rel).is_file(), rel
    # archives kept in data/archives, checksums recorded
    record = json.loads((data_root / "archives" / RECORD).read_text())
    assert sorted(record) == sorted(e["name"] for e in entries)
    if name == "coco_stuff":  # stuffthingmaps has no published checksum: recorded with a warning
        data = archives["stuffthingmaps_trainval2017.zip"].read_bytes()
        entry = record["stuffthingmaps_trainval2017.zip"]
        assert entry["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert entry["source"] == SELF_RECORDED and entry["recorded_at"]
        assert entry["url"] == f"{server.url}/files/stuffthingmaps_trainval2017.zip"
        assert "no published checksum" in caplog.text
    # a rerun is a no-op: nothing requested
    n = len(server.requests)
    download_dataset(name, entries, data_root, progress=False)
    assert len(server.requests) == n


def test_recorded_checksum_guards_later_runs(server, tmp_path):
    archives = pack_fake_archives("coco_stuff", tmp_path / "fakes")
    entries = [e for e in entries_for("coco_stuff", server, archives) if e["checksum"] is None]
    data_root = tmp_path / "data"
    download_dataset("coco_stuff", entries, data_root, progress=False)
    # the archive is later corrupted and the extraction redone: the recorded digest catches it
    (data_root / "archives" / "stuffthingmaps_trainval2017.zip").write_bytes(b"tampered")
    for marker in (data_root / "coco_stuff164k" / "annotations").glob(".*.extracted.json"):
        marker.unlink()
    with pytest.raises(ChecksumError, match="sha256 checksum mismatch"):
        download_dataset("coco_stuff", entries, data_root, progress=False)


def test_download_from_dir(tmp_path):
    archives = pack_fake_archives("ade20k", tmp_path / "hand")
    entries = OmegaConf.to_container(load_config([PARAMS / "ade20k.yaml"]).data.download)
    entries[0]["checksum"] = md5(archives["ADEChallengeData2016.zip"].read_bytes())
    entries[0]["url"] = "http://127.0.0.1:9/never-contacted"
    data_root = tmp_path / "data"
    download_dataset("ade20k", entries, data_root, from_dir=tmp_path / "hand", progress=False)
    assert (data_root / "ade/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg").is_file()
    assert not (data_root / "archives" / "ADEChallengeData2016.zip").exists()  # used in place
    # a wrong archive in --from DIR is refused before extraction
    entries[0]["checksum"] = md5(b"official")
    with pytest.raises(ChecksumError):
        download_dataset("ade20k", entries, tmp_path / "data2", from_dir=tmp_path / "hand", progress=False)
    assert not (tmp_path / "data2" / "ade").exists()
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016.zip"):
        download_dataset("ade20k", entries, tmp_path / "data3", from_dir=tmp_path / "empty", progress=False)


def test_wrong_checksum_blocks_extraction(server, tmp_path):
    archives = pack_fake_archives("ade20k", tmp_path / "fakes")
    entries = entries_for("ade20k", server, archives)
    entries[0]["checksum"] = "md5:7328b3957e407ddae1d3cbf487f149ef"  # the official one, not the fake's
    with pytest.raises(ChecksumError) as err:
        download_dataset("ade20k", entries, tmp_path / "data", progress=False)
    assert "7328b3957e407ddae1d3cbf487f149ef" in str(err.value)
    assert hashlib.md5(archives["ADEChallengeData2016.zip"].read_bytes()).hexdigest() in str(err.value)
    assert not (tmp_path / "data" / "ade").exists()


def test_malicious_download_refused(server, tmp_path):
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ADEChallengeData2016/ok.txt", b"ok")
        zf.writestr("../../escape.txt", b"pwned")
    server.files["/files/evil.zip"] = evil.read_bytes()
    entries = [
        {
            "name": "ADEChallengeData2016.zip",
            "url": f"{server.url}/files/evil.zip",
            "checksum": md5(evil.read_bytes()),
            "extract_to": "ade",
        }
    ]
    with pytest.raises(UnsafeArchiveError, match="'../../escape.txt'"):
        download_dataset("ade20k", entries, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "ade").exists()
    assert not list(tmp_path.rglob("escape.txt"))


def test_mirror_used_when_primary_is_missing(server, tmp_path):
    server.files["/mirror/f.zip"] = PAYLOAD
    from fsanet.data.download import _fetch_any

    dest, url = _fetch_any(
        [f"{server.url}/gone/f.zip", f"{server.url}/mirror/f.zip"],
        tmp_path / "f.zip",
        md5(PAYLOAD),
        0,
        10,
        False,
    )
    assert dest.read_bytes() == PAYLOAD and url == f"{server.url}/mirror/f.zip"
    with pytest.raises(DownloadError, match="404.*404"):
        _fetch_any([f"{server.url}/a", f"{server.url}/b"], tmp_path / "g.zip", None, 0, 10, False)


# --------------------------------------------------------------------------------------------
# Cityscapes: login, package ids, server-side MD5; credentials never leak
# --------------------------------------------------------------------------------------------
@pytest.fixture
def cityscapes_site(server, tmp_path):
    archives = pack_fake_archives("cityscapes", tmp_path / "fakes")
    entries = OmegaConf.to_container(load_config([PARAMS / "cityscapes.yaml"]).data.download)
    for e in entries:
        server.packages[e["package_id"]] = (e["name"], archives[e["name"]].read_bytes())
        e["site"] = server.url
    return server, entries


def _no_secret_anywhere(root: Path, text: str) -> None:
    for secret in (USER, PASSWORD, urllib.parse.quote_plus(USER), urllib.parse.quote_plus(PASSWORD)):
        assert secret not in text
        for p in root.rglob("*"):
            if p.is_file():
                assert secret.encode() not in p.read_bytes(), p


def test_cityscapes_login_flow(cityscapes_site, tmp_path, monkeypatch, caplog):
    server, entries = cityscapes_site
    monkeypatch.setenv("CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", PASSWORD)
    data_root = tmp_path / "data"
    with caplog.at_level(logging.DEBUG):
        download_dataset("cityscapes", entries, data_root, progress=False)
    root = data_root / "cityscapes"
    for rel in (
        "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
        "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png",
        "license.txt",
        "README",
    ):
        assert (root / rel).is_file(), rel
    # one login (form fields as the site expects), then MD5 + file per package, all with the session cookie
    assert len(server.logins) == 1 and server.logins[0]["submit"] == ["Login"]
    assert [p for m, p, _ in server.requests if m == "GET" and "packageID" in p] == [
        "/md5-sum/?packageID=1",
        "/file-handling/?packageID=1",
        "/md5-sum/?packageID=3",
        "/file-handling/?packageID=3",
    ]
    record = json.loads((data_root / "archives" / RECORD).read_text())
    assert record["gtFine_trainvaltest.zip"]["checksum"] == md5(server.packages[1][1])
    assert record["gtFine_trainvaltest.zip"]["source"] == f"published by {server.url} (package 1)"
    _no_secret_anywhere(data_root, caplog.text)
    # a rerun needs neither the network nor the credentials
    monkeypatch.delenv("CITYSCAPES_PASSWORD")
    n = len(server.requests)
    download_dataset("cityscapes", entries, data_root, progress=False)
    assert len(server.requests) == n


def test_cityscapes_bad_credentials(cityscapes_site, tmp_path, monkeypatch, caplog):
    server, entries = cityscapes_site
    monkeypatch.setenv("CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "wrong-" + PASSWORD)
    with caplog.at_level(logging.DEBUG), pytest.raises(DownloadError) as err:
        download_dataset("cityscapes", entries, tmp_path / "data", progress=False)
    assert "login refused" in str(err.value) and "CITYSCAPES_PASSWORD" in str(err.value)
    assert PASSWORD not in str(err.value) and USER not in str(err.value)
    assert PASSWORD not in caplog.text and USER not in caplog.text
    assert not (tmp_path / "data" / "cityscapes").exists()


def test_cityscapes_missing_credentials(cityscapes_site, tmp_path, monkeypatch):
    _, entries = cityscapes_site
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    with pytest.raises(DownloadError, match="CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD"):
        download_dataset("cityscapes", entries, tmp_path / "data", progress=False)


def test_cityscapes_server_md5_mismatch(cityscapes_site, tmp_path, monkeypatch):
    server, entries = cityscapes_site
    monkeypatch.setenv("CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", PASSWORD)
    server.md5_override[1] = "0" * 32
    with pytest.raises(ChecksumError, match="expected 0{32}"):
        download_dataset("cityscapes", entries, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "cityscapes").exists()


def test_cityscapes_pinned_checksum_and_unknown_package(cityscapes_site, tmp_path, monkeypatch):
    server, entries = cityscapes_site
    monkeypatch.setenv("CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", PASSWORD)
    pinned = [dict(entries[0], checksum=md5(server.packages[1][1]))]
    download_dataset("cityscapes", pinned, tmp_path / "data", progress=False)  # logs in, skips the MD5 query
    assert [p for m, p, _ in server.requests if "packageID" in p] == ["/file-handling/?packageID=1"]
    unknown = [dict(entries[0], name="gtCoarse.zip")]
    with pytest.raises(DownloadError, match="'gtCoarse.zip' is not offered"):
        download_dataset("cityscapes", unknown, tmp_path / "data2", progress=False)


def test_cityscapes_not_logged_in_is_a_clear_error(cityscapes_site, tmp_path):
    server, _ = cityscapes_site
    import requests

    with requests.Session() as anonymous, pytest.raises(DownloadError, match="not logged in"):
        site.package_checksum(anonymous, server.url, 1)
    with pytest.raises(DownloadError, match="redirected"):
        fetch(
            site.package_url(server.url, 1),
            tmp_path / "x.zip",
            None,
            allow_redirects=False,
            progress=False,
        )
    session = requests.Session()
    session.cookies.set("session", "ok")
    assert site.package_ids(session, server.url) == {
        "gtFine_trainvaltest.zip": 1,
        "leftImg8bit_trainvaltest.zip": 3,
    }


def test_cityscapes_from_dir_without_credentials(cityscapes_site, tmp_path, monkeypatch, caplog):
    server, entries = cityscapes_site
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    hand = tmp_path / "hand"
    hand.mkdir()
    for name, data in server.packages.values():
        (hand / name).write_bytes(data)
    with caplog.at_level(logging.WARNING):
        download_dataset("cityscapes", entries, tmp_path / "data", from_dir=hand, progress=False)
    assert "no published checksum" in caplog.text  # recorded, since the site's MD5 needs a login
    assert server.requests == []
    labels = read_label(
        tmp_path / "data/cityscapes/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    )
    assert labels.shape == (32, 64)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def test_cli_download_and_errors(server, tmp_path, capsys):
    archives = pack_fake_archives("ade20k", tmp_path / "fakes")
    entries = entries_for("ade20k", server, archives)
    cfg = tmp_path / "ade_local.yaml"
    cfg.write_text(json.dumps({"data": {"name": "ade20k", "num_classes": 150, "download": entries}}))
    assert (
        main(["-q", "data", "download", "ade20k", "--root", str(tmp_path / "data"), "--config", str(cfg)])
        == 0
    )
    assert "extracted into" in capsys.readouterr().out
    assert (tmp_path / "data/ade/ADEChallengeData2016/annotations/training/ADE_train_00000001.png").is_file()
    # a 404 is one line naming the URL, exit status 2
    entries[0]["url"] = f"{server.url}/files/missing.zip"
    cfg.write_text(json.dumps({"data": {"name": "ade20k", "num_classes": 150, "download": entries}}))
    assert main(["-q", "data", "download", "ade20k", "--root", str(tmp_path / "other"), "-c", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{server.url}/files/missing.zip" in err and "404" in err
    assert main(["-q", "data", "download", "synthetic"]) == 2
    assert "generated" in capsys.readouterr().err


def test_params_files_name_the_fake_archives():
    """params/data entries and the fakes agree on archive names and extraction folders."""
    for name, archives in ARCHIVES.items():
        entries = load_config([PARAMS / f"{name}.yaml"]).data.download
        assert [(e.name, e.extract_to) for e in entries] == [(a, folder) for a, folder, _ in archives]


def test_cleanup_helper_really_detects_leaks(tmp_path):
    # the leak check used above must be able to fail
    (tmp_path / "leak.txt").write_text(f"user={USER}")
    with pytest.raises(AssertionError):
        _no_secret_anywhere(tmp_path, "")
    shutil.rmtree(tmp_path)
