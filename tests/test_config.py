"""Config loading: schema + YAML + dotlist, with one clear line per error."""

from dataclasses import dataclass, field

import pytest
from omegaconf import MISSING

from fsanet.cli import main
from fsanet.config import ConfigError, config_hash, load_config


def test_defaults_and_override_order(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("bench:\n  repeats: 30\n  channels: 64\n")
    b = tmp_path / "b.yaml"
    b.write_text("bench:\n  repeats: 40\n")
    cfg = load_config([a, b], ["bench.channels=32"])
    assert cfg.bench.repeats == 40 and cfg.bench.channels == 32 and cfg.bench.batch == 1


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("bench:\n  repetas: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config([p])
    msg = str(err.value)
    assert "bad.yaml" in msg and "repetas" in msg and "\n" not in msg


def test_wrong_type_names_key_and_file(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("bench:\n  repeats: many\n")
    with pytest.raises(ConfigError, match=r"t\.yaml.*bench\.repeats"):
        load_config([p])


def test_bad_enum_and_override_errors():
    with pytest.raises(ConfigError, match="command line.*bench.device"):
        load_config([], ["bench.device=tpu"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["bench.repeats"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(["/nonexistent/x.yaml"])


def test_invalid_yaml(tmp_path):
    p = tmp_path / "y.yaml"
    p.write_text("bench: [unclosed\n")
    with pytest.raises(ConfigError, match="y.yaml: not valid YAML"):
        load_config([p])


def test_missing_value_names_key():
    @dataclass
    class Inner:
        name: str = MISSING

    @dataclass
    class Root:
        inner: Inner = field(default_factory=Inner)

    with pytest.raises(ConfigError, match=r"inner\.name"):
        load_config([], [], schema=Root)
    assert load_config([], ["inner.name=x"], schema=Root).inner.name == "x"


def test_config_hash_is_stable_and_sensitive():
    a = load_config([], ["bench.repeats=21"])
    b = load_config([], ["bench.repeats=21"])
    c = load_config([], ["bench.repeats=22"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_cli_reports_config_error_in_one_line(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("bench:\n  nope: 1\n")
    rc = main(["bench", "attention", "--config", str(p), "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "bad.yaml" in err and "nope" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.json").exists()


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("bench", "tables"):
        assert cmd in out


def test_list_items_override_by_index_and_errors_name_the_key(caplog):
    """`data.download.0.url=…` reaches the list item; a bad index or a repeated key is named."""
    cfg = load_config(["params/data/cityscapes.yaml"], ["data.download.0.url=http://127.0.0.1:9/a.zip"])
    assert cfg.data.download[0].url == "http://127.0.0.1:9/a.zip"
    assert cfg.data.download[1].url != "http://127.0.0.1:9/a.zip"
    with pytest.raises(ConfigError, match="data.download.7.url"):
        load_config(["params/data/cityscapes.yaml"], ["data.download.7.url=x"])
    assert load_config([], ["train.seed=1", "train.seed=2"]).train.seed == 2  # the last wins, with a warning
    assert "train.seed is given more than once; the last value (2) wins" in caplog.text
    # the usual forms are unchanged: typed values, lists, null
    cfg = load_config([], ["train.seed=3", "model.attention.band=[0,8,0,8]", "eval.eval_band=null",
                           "train.lr=1e-3"])
    assert cfg.train.seed == 3 and list(cfg.model.attention.band) == [0, 8, 0, 8]
    assert cfg.eval.eval_band is None and cfg.train.lr == pytest.approx(1e-3)


def test_short_band_and_device_errors_explain_the_fix(monkeypatch):
    import torch

    from fsanet.engine.distributed import resolve_device
    from fsanet.models import build_model

    with pytest.raises(ValueError, match=r"model.attention.*two numbers mean \[0, n_u\) × \[0, n_v\).*\[0, n, 0, n\]"):
        build_model(load_config([], ["model.attention.band=[0,5]"]).model, 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="train.device=cuda but torch sees no GPU.*set train.device=cpu"):
        resolve_device("cuda", key="train.device")
