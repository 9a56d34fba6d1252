"""Attacks on and faults of the archive downloads, against a local HTTP server (127.0.0.1 only).

Poisoned first-use digests (HTML login pages, archives of the wrong shape), `fsanet data verify`, and two
real processes downloading the same archives at once (locks), a download killed half way, servers that
cannot resume. Each error must be one line naming the file, URL or lock and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from fakes import pack_fake_archives
from filelock import FileLock
from omegaconf import OmegaConf
from test_download import PARAMS, USER, FakeServer, entries_for, md5

from fsanet.cli import main
from fsanet.config import load_config
from fsanet.data.archive import ArchiveError
from fsanet.data.download import (
    LOCK_TIMEOUT_ENV,
    RECORD,
    SELF_RECORDED,
    ChecksumError,
    DownloadError,
    download_dataset,
    fetch,
    looks_like_html,
)

REPO = Path(__file__).resolve().parent.parent
STUFF = "stuffthingmaps_trainval2017.zip"  # the COCO-Stuff archive without a published checksum
LOGIN_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Login</title></head>"
    b"<body><form action='/login' method='post'><input name='username'></form></body></html>\n"
)


@pytest.fixture
def server():
    with FakeServer() as s:
        yield s


def record_of(data_root: Path) -> dict:
    path = data_root / "archives" / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def stuff_entries(server: FakeServer, tmp_path: Path) -> tuple[list[dict], bytes]:
    """The COCO-Stuff entry without a published checksum, served by ``server``, and its bytes."""
    archives = pack_fake_archives("coco_stuff", tmp_path / "fakes")
    entries = [e for e in entries_for("coco_stuff", server, archives) if e["name"] == STUFF]
    return entries, archives[STUFF].read_bytes()


def write_cfg(path: Path, name: str, entries: list[dict]) -> Path:
    num_classes = load_config([PARAMS / f"{name}.yaml"]).data.num_classes
    path.write_text(json.dumps({"data": {"name": name, "num_classes": num_classes, "download": entries}}))
    return path


def one_line(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


# --------------------------------------------------------------------------------------------
# Poisoned first-use digests
# --------------------------------------------------------------------------------------------
def test_looks_like_html(tmp_path):
    for page in (LOGIN_PAGE, b"\xef\xbb\xbf  \n<html>", b"<?xml version='1.0'?><html/>", b"<!-- x --><p>"):
        assert looks_like_html(page), page
    archives = pack_fake_archives("voc", tmp_path / "voc")  # a tar and a tgz
    archives |= pack_fake_archives("ade20k", tmp_path / "ade")  # a zip
    for path in archives.values():
        assert not looks_like_html(path.read_bytes()[:1024]), path
    assert not looks_like_html(b"") and not looks_like_html(b"<\0binary")


@pytest.mark.parametrize("how", ["content-type", "body"])
def test_html_answer_is_refused_and_not_recorded(server, tmp_path, how):
    entries, data = stuff_entries(server, tmp_path)
    path = f"/files/{STUFF}"
    server.files[path] = LOGIN_PAGE
    if how == "content-type":
        server.content_types[path] = "text/html; charset=utf-8"
    else:  # served as binary, but the body is a web page
        server.files[path] = b"\n  " + LOGIN_PAGE
    data_root = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        download_dataset("coco_stuff", entries, data_root, progress=False)
    msg = one_line(str(err.value))
    assert f"{server.url}{path}" in msg and "HTML" in msg and "login page" in msg
    assert STUFF not in record_of(data_root)
    assert not (data_root / "archives" / STUFF).exists()
    assert not (data_root / "archives" / f"{STUFF}.part").exists()
    # the real archive is then accepted (it was not refused by a poisoned digest) and recorded
    server.files[path] = data
    server.content_types.clear()
    download_dataset("coco_stuff", entries, data_root, progress=False)
    assert record_of(data_root)[STUFF]["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (data_root / "coco_stuff164k/annotations/val2017/000000000009.png").is_file()


def test_html_answer_through_the_cli_is_one_line(server, tmp_path, capsys):
    entries, _ = stuff_entries(server, tmp_path)
    server.files[f"/files/{STUFF}"] = LOGIN_PAGE
    server.content_types[f"/files/{STUFF}"] = "text/html"
    cfg = write_cfg(tmp_path / "cfg.json", "coco_stuff", entries)
    assert (
        main(["-q", "data", "download", "coco_stuff", "--root", str(tmp_path / "data"), "-c", str(cfg)]) == 2
    )
    err = one_line(capsys.readouterr().err)
    assert f"{server.url}/files/{STUFF}" in err and "login page" in err


def test_cli_download_applies_the_extraction_limits(server, tmp_path, capsys):
    """``data.download[].unpacked_bytes`` and ``data.extract.*`` reach the extraction of a download."""
    entries, data = stuff_entries(server, tmp_path)
    entries[0]["unpacked_bytes"] = 10  # far below what the archive declares
    cfg = write_cfg(tmp_path / "cfg.json", "coco_stuff", entries)
    root = tmp_path / "data"
    assert main(["-q", "data", "download", "coco_stuff", "--root", str(root), "-c", str(cfg)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "unpacked_bytes" in err and STUFF in err
    assert STUFF not in record_of(root) and not (root / "coco_stuff164k").exists()
    # a free-disk reserve larger than any disk refuses it too; the default limits accept it
    entries[0]["unpacked_bytes"] = None
    cfg = write_cfg(tmp_path / "cfg.json", "coco_stuff", entries)
    args = ["-q", "data", "download", "coco_stuff", "--root", str(root), "-c", str(cfg)]
    assert main([*args, f"data.extract.min_free_bytes={2**62}"]) == 2
    assert "data.extract.min_free_bytes" in one_line(capsys.readouterr().err)
    assert main(args) == 0
    assert record_of(root)[STUFF]["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_html_saved_by_an_earlier_run_is_downloaded_again(server, tmp_path, caplog):
    entries, data = stuff_entries(server, tmp_path)
    data_root = tmp_path / "data"
    (data_root / "archives").mkdir(parents=True)
    (data_root / "archives" / STUFF).write_bytes(LOGIN_PAGE)
    (data_root / "archives" / f"{STUFF}.part").write_bytes(LOGIN_PAGE)
    with caplog.at_level(logging.WARNING):
        download_dataset("coco_stuff", entries, data_root, progress=False)
    assert "HTML page" in caplog.text
    assert (data_root / "archives" / STUFF).read_bytes() == data
    assert server.gets(f"/files/{STUFF}") == [None]  # a fresh download, not a resume of the page


def test_from_dir_login_page_is_refused_and_the_real_archive_accepted(server, tmp_path, monkeypatch):
    """A Cityscapes login page saved as gtFine_trainvaltest.zip (no credentials, so no site MD5)."""
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    archives = pack_fake_archives("cityscapes", tmp_path / "fakes")
    entries = OmegaConf.to_container(load_config([PARAMS / "cityscapes.yaml"]).data.download)
    for e in entries:
        e["site"] = server.url
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "gtFine_trainvaltest.zip").write_bytes(LOGIN_PAGE)
    (hand / "leftImg8bit_trainvaltest.zip").write_bytes(archives["leftImg8bit_trainvaltest.zip"].read_bytes())
    data_root = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        download_dataset("cityscapes", entries, data_root, from_dir=hand, progress=False)
    msg = one_line(str(err.value))
    assert str(hand / "gtFine_trainvaltest.zip") in msg and "HTML page" in msg and "login page" in msg
    assert "gtFine_trainvaltest.zip" not in record_of(data_root)
    assert (hand / "gtFine_trainvaltest.zip").read_bytes() == LOGIN_PAGE  # the user's file is left alone
    # the official archive, put there afterwards, is accepted
    real = archives["gtFine_trainvaltest.zip"].read_bytes()
    (hand / "gtFine_trainvaltest.zip").write_bytes(real)
    download_dataset("cityscapes", entries, data_root, from_dir=hand, progress=False)
    entry = record_of(data_root)["gtFine_trainvaltest.zip"]
    assert entry["checksum"] == "sha256:" + hashlib.sha256(real).hexdigest()
    assert entry["source"] == SELF_RECORDED and entry["recorded_at"]
    assert entry["url"] == (hand / "gtFine_trainvaltest.zip").resolve().as_uri()
    assert (
        data_root / "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    ).is_file()
    assert server.requests == []
    assert USER not in json.dumps(record_of(data_root))


def test_from_dir_non_archive_is_refused_and_not_recorded(tmp_path):
    entries = [{"name": STUFF, "url": "http://127.0.0.1:9/never", "checksum": None, "extract_to": "x"}]
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / STUFF).write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ArchiveError) as err:
        download_dataset("coco_stuff", entries, tmp_path / "data", from_dir=hand, progress=False)
    msg = one_line(str(err.value))
    assert str(hand / STUFF) in msg and "not recorded" in msg and "replace" in msg
    assert record_of(tmp_path / "data") == {}
    assert (hand / STUFF).is_file()


def test_archive_of_the_wrong_shape_is_not_recorded(server, tmp_path):
    """A valid zip that is not the annotation archive: refused before anything is extracted."""
    entries, _ = stuff_entries(server, tmp_path)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("something/else.txt", b"not the stuff maps")
    server.files[f"/files/{STUFF}"] = other.read_bytes()
    data_root = tmp_path / "data"
    with pytest.raises(ArchiveError) as err:
        download_dataset("coco_stuff", entries, data_root, progress=False)
    msg = one_line(str(err.value))
    assert "train2017/" in msg and "not recorded" in msg and f"{server.url}/files/{STUFF}" in msg
    assert record_of(data_root) == {}
    assert not (data_root / "archives" / STUFF).exists()  # the bad download is deleted
    assert not (data_root / "coco_stuff164k" / "annotations" / "something").exists()


def test_unknown_archive_without_checksum_is_not_trusted(server, tmp_path):
    entries, _ = stuff_entries(server, tmp_path)
    entries[0]["name"] = "extra.zip"
    server.files["/files/extra.zip"] = server.files[f"/files/{STUFF}"]
    entries[0]["url"] = f"{server.url}/files/extra.zip"
    with pytest.raises(DownloadError, match="pin its checksum") as err:
        download_dataset("coco_stuff", entries, tmp_path / "data", progress=False)
    one_line(str(err.value))
    assert record_of(tmp_path / "data") == {}


# --------------------------------------------------------------------------------------------
# fsanet data verify
# --------------------------------------------------------------------------------------------
def test_verify_reports_each_archive_and_fails_on_mismatch(server, tmp_path, capsys):
    archives = pack_fake_archives("coco_stuff", tmp_path / "fakes")
    entries = entries_for("coco_stuff", server, archives)
    cfg = write_cfg(tmp_path / "cfg.json", "coco_stuff", entries)
    root = tmp_path / "data"
    download_dataset("coco_stuff", entries, root, progress=False)
    verify = ["-q", "data", "verify", "coco_stuff", "--root", str(root), "-c", str(cfg)]
    assert main(verify) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["train2017.zip"].startswith("ok (md5 ") and lines["val2017.zip"].startswith("ok (md5 ")
    assert lines[STUFF].startswith("self-recorded (sha256 ") and f"{server.url}/files/{STUFF}" in lines[STUFF]
    (root / "archives" / "val2017.zip").unlink()
    (root / "archives" / "train2017.zip").write_bytes(b"tampered")
    with pytest.raises(SystemExit) as exc:
        main(verify)
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert (
        lines["train2017.zip"].startswith("mismatch (md5 expected ") and "delete it" in lines["train2017.zip"]
    )
    assert lines["val2017.zip"].startswith("missing (")
    assert lines[STUFF].startswith("self-recorded (")
    assert "train2017.zip" in one_line(err)


def test_poisoned_record_is_caught_by_verify_and_cleared(server, tmp_path, capsys):
    """A digest of a login page recorded by an older version: verify shows it, --clear forgets it."""
    entries, data = stuff_entries(server, tmp_path)
    cfg = write_cfg(tmp_path / "cfg.json", "coco_stuff", entries)
    root = tmp_path / "data"
    (root / "archives").mkdir(parents=True)
    poisoned = "sha256:" + hashlib.sha256(LOGIN_PAGE).hexdigest()
    (root / "archives" / RECORD).write_text(json.dumps({STUFF: poisoned, "train2017.zip": md5(b"x")}))
    (root / "archives" / STUFF).write_bytes(data)  # the official archive, downloaded by hand
    with pytest.raises(ChecksumError) as err:
        download_dataset("coco_stuff", entries, root, progress=False)
    assert f"fsanet data verify coco_stuff --clear --archive {STUFF}" in one_line(str(err.value))
    verify = ["-q", "data", "verify", "coco_stuff", "--root", str(root), "-c", str(cfg)]
    with pytest.raises(SystemExit) as exc:
        main(verify)
    assert exc.value.code == 1
    out = capsys.readouterr().out
    assert f"{STUFF}: mismatch (sha256 expected {poisoned.split(':')[1]}" in out and "--clear" in out
    assert main([*verify, "--clear", "--archive", "nope.zip"]) == 2
    assert "nope.zip" in one_line(capsys.readouterr().err)
    assert main([*verify, "--clear", "--archive", STUFF]) == 0
    assert f"forgot the self-recorded digest of {STUFF}" in capsys.readouterr().out
    assert set(record_of(root)) == {"train2017.zip"}  # other entries untouched
    download_dataset("coco_stuff", entries, root, progress=False)
    assert server.requests == []  # the archive already there is checked and recorded, not fetched
    assert record_of(root)[STUFF]["source"] == SELF_RECORDED
    assert main(verify) == 0
    assert f"{STUFF}: self-recorded" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Two processes at once; a killed download; servers that cannot resume
# --------------------------------------------------------------------------------------------
def start_cli(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`python -m fsanet.cli ARGS` in a new process importing fsanet from this checkout, output to ``log``."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fsanet.cli", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": path},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def run_at_once(commands: list[list[str]], tmp_path: Path, gate: Path) -> list[tuple[int, str]]:
    """Run CLI commands in parallel processes that start downloading at the same moment.

    The test holds the lock ``gate`` (the first archive's) until every process waits for it, then
    releases it: the processes race for it as two downloads started together would.

    Returns:
        Each process's exit status and output.
    """
    logs = [tmp_path / f"process{i}.log" for i in range(len(commands))]
    gate.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(gate):
        procs = [start_cli(c, tmp_path, log) for c, log in zip(commands, logs)]
        deadline = time.monotonic() + 90
        while not all("waiting for another process" in log.read_text() for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                break  # a process that does not wait for the lock: the assertions below tell
            time.sleep(0.05)
    codes = [p.wait(timeout=120) for p in procs]
    return [(code, log.read_text()) for code, log in zip(codes, logs)]


def extractions(log_text: str) -> list[tuple[str, str]]:
    return re.findall(r": extracting (\S+) into (\S+)", log_text)


def test_two_processes_download_the_same_archives_once(server, tmp_path):
    archives = pack_fake_archives("coco_stuff", tmp_path / "fakes")
    entries = [
        e for e in entries_for("coco_stuff", server, archives) if e["name"] in ("train2017.zip", STUFF)
    ]
    cfg = write_cfg(tmp_path / "cfg.json", "coco_stuff", entries)
    root = tmp_path / "data"
    server.block, server.throttle_s = 512, 0.1  # about 1 s per archive
    args = ["data", "download", "coco_stuff", "--root", str(root), "-c", str(cfg)]
    results = run_at_once([args, args], tmp_path, root / "archives" / "train2017.zip.lock")
    for code, text in results:
        assert code == 0, text
    logs = "".join(text for _, text in results)
    for e in entries:
        name = e["name"]
        assert server.gets(f"/files/{name}") == [None], name  # one GET of the whole archive, no resume
        assert (root / "archives" / name).read_bytes() == archives[name].read_bytes()
        assert [t for a, t in extractions(logs) if a == name] == [str(root / e["extract_to"])], logs
    assert re.search(r"waiting for another process, which holds the lock \S+train2017\.zip\.lock", logs)
    assert record_of(root)[STUFF]["source"] == SELF_RECORDED
    assert (root / "coco_stuff164k/images/train2017/000000000025.jpg").is_file()
    assert (root / "coco_stuff164k/annotations/train2017/000000000025.png").is_file()
    assert not list((root / "archives").glob("*.part"))


def test_coco_and_coco_stuff_at_once_share_one_download(server, tmp_path):
    coco = pack_fake_archives("coco", tmp_path / "fakes_coco")
    stuff = pack_fake_archives("coco_stuff", tmp_path / "fakes_stuff")
    e_coco = [e for e in entries_for("coco", server, coco) if e["name"] == "train2017.zip"]
    e_stuff = [e for e in entries_for("coco_stuff", server, stuff) if e["name"] == "train2017.zip"]
    assert e_coco[0]["url"] == e_stuff[0]["url"]
    root = tmp_path / "data"
    server.block, server.throttle_s = 512, 0.1
    commands = []
    for name, entries in (("coco", e_coco), ("coco_stuff", e_stuff)):
        cfg = write_cfg(tmp_path / f"{name}.json", name, entries)
        commands.append(["data", "download", name, "--root", str(root), "-c", str(cfg)])
    results = run_at_once(commands, tmp_path, root / "archives" / "train2017.zip.lock")
    for code, text in results:
        assert code == 0, text
    assert server.gets("/files/train2017.zip") == [None]
    assert (root / "archives" / "train2017.zip").read_bytes() == coco["train2017.zip"].read_bytes()
    assert (root / "coco/train2017/000000000025.jpg").is_file()
    assert (root / "coco_stuff164k/images/train2017/000000000025.jpg").is_file()
    assert sorted(t for _, t in extractions("".join(t for _, t in results))) == sorted(
        [str(root / "coco"), str(root / "coco_stuff164k/images")]
    )


def test_download_killed_half_way_is_resumed_by_the_next_process(server, tmp_path, caplog):
    entries, _ = stuff_entries(server, tmp_path)
    # The download writes 1 MiB blocks: an archive of 3 MiB leaves a partial file when killed.
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("train2017/000000000025.png", b"png")
        zf.writestr("val2017/000000000009.png", b"png")
        zf.writestr("train2017/padding.bin", os.urandom(3 << 20))
    data = big.read_bytes()
    server.files[f"/files/{STUFF}"] = data
    cfg = write_cfg(tmp_path / "cfg.json", "coco_stuff", entries)
    root = tmp_path / "data"
    part = root / "archives" / f"{STUFF}.part"
    server.block, server.throttle_s = 1 << 18, 0.25  # 256 KiB every 0.25 s: 3 s for the whole file
    args = ["-q", "data", "download", "coco_stuff", "--root", str(root), "-c", str(cfg)]
    proc = start_cli(args, tmp_path, tmp_path / "killed.log")
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size >= 1 << 20) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup; the operating system releases the process's lock
    proc.wait(timeout=30)
    have = part.stat().st_size
    assert 0 < have < len(data) and part.read_bytes() == data[:have]
    server.throttle_s = 0.0
    with caplog.at_level(logging.INFO):
        download_dataset("coco_stuff", entries, root, progress=False, lock_timeout=5)
    assert "waiting for another process" not in caplog.text
    ranges = server.gets(f"/files/{STUFF}")
    assert ranges[0] is None and ranges[-1].startswith("bytes=") and int(ranges[-1][6:-1]) >= have
    assert (root / "archives" / STUFF).read_bytes() == data


def test_lock_held_too_long_is_one_line_naming_the_lock(server, tmp_path, capsys, caplog, monkeypatch):
    entries, _ = stuff_entries(server, tmp_path)
    root = tmp_path / "data"
    lock_path = root / "archives" / f"{STUFF}.lock"
    lock_path.parent.mkdir(parents=True)
    with FileLock(lock_path):  # another download of this archive is running
        with caplog.at_level(logging.WARNING), pytest.raises(DownloadError) as err:
            download_dataset("coco_stuff", entries, root, progress=False, lock_timeout=0.3)
        msg = one_line(str(err.value))
        assert str(lock_path) in msg and LOCK_TIMEOUT_ENV in msg and "died" in msg
        assert f"waiting for another process, which holds the lock {lock_path}" in caplog.text
        cfg = write_cfg(tmp_path / "cfg.json", "coco_stuff", entries)
        monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0.2")
        assert main(["-q", "data", "download", "coco_stuff", "--root", str(root), "-c", str(cfg)]) == 2
        assert str(lock_path) in one_line(capsys.readouterr().err)
        monkeypatch.setenv(LOCK_TIMEOUT_ENV, "soon")
        assert main(["-q", "data", "download", "coco_stuff", "--root", str(root), "-c", str(cfg)]) == 2
        assert LOCK_TIMEOUT_ENV in one_line(capsys.readouterr().err)
    assert server.requests == []


def test_part_on_a_server_without_ranges_restarts_cleanly(server, tmp_path):
    entries, data = stuff_entries(server, tmp_path)
    root = tmp_path / "data"
    (root / "archives").mkdir(parents=True)
    (root / "archives" / f"{STUFF}.part").write_bytes(data[:300])
    server.no_range = True
    download_dataset("coco_stuff", entries, root, progress=False)
    assert server.gets(f"/files/{STUFF}") == ["bytes=300-"]  # answered 200 with the whole file
    assert (root / "archives" / STUFF).read_bytes() == data
    assert record_of(root)[STUFF]["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_part_on_a_server_answering_the_wrong_range_restarts_from_zero(server, tmp_path):
    payload = bytes(range(256)) * 100
    server.files["/f.bin"] = payload
    server.bad_range = True
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)
    dest = fetch(f"{server.url}/f.bin", tmp_path / "f.bin", md5(payload), progress=False)
    assert dest.read_bytes() == payload
    assert server.gets("/f.bin") == ["bytes=1000-", None]
