"""Atomic output: all or nothing, and published with the mode a plain open() would give."""

import os
import stat

import pytest

from fsanet.engine.checkpoint import save_checkpoint
from fsanet.io import atomic_path, read_json, write_json, write_text


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o000, 0o664)])
def test_outputs_follow_the_umask_and_are_never_world_writable(tmp_path, umask, mask, expected):
    umask(mask)
    write_json(tmp_path / "a.json", {"x": 1})
    write_text(tmp_path / "b.txt", "hello")
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "config": {}})
    for name in ("a.json", "b.txt", "c.pt"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == expected, f"{name}: {oct(mode)}"
        assert not mode & stat.S_IWOTH


def test_a_failed_write_publishes_nothing_and_leaves_no_temporary(tmp_path):
    write_text(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "keep.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(ValueError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        read_json(tmp_path / "bad.json")
