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
    with pytest.raises(
        ConfigError, match=r"command line: train.seed is given twice \(train.seed=1 and train.seed=2\)"
    ):
        load_config([], ["train.seed=1", "train.seed=2"])
    # the usual forms are unchanged: typed values, lists, null
    cfg = load_config(
        [], ["train.seed=3", "model.attention.band=[0,8,0,8]", "eval.eval_band=null", "train.lr=1e-3"]
    )
    assert cfg.train.seed == 3 and list(cfg.model.attention.band) == [0, 8, 0, 8]
    assert cfg.eval.eval_band is None and cfg.train.lr == pytest.approx(1e-3)


def test_short_band_and_device_errors_explain_the_fix(monkeypatch):
    import torch

    from fsanet.engine.distributed import resolve_device
    from fsanet.models import build_model

    with pytest.raises(
        ValueError, match=r"model.attention.*two numbers mean \[0, n_u\) × \[0, n_v\).*\[0, n, 0, n\]"
    ):
        build_model(load_config([], ["model.attention.band=[0,5]"]).model, 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="train.device=cuda but torch sees no GPU.*set train.device=cpu"):
        resolve_device("cuda", key="train.device")


# --------------------------------------------------------------------------------------------
# careless and hostile config input: one line naming the file or key, never a silent acceptance
@pytest.mark.parametrize(
    "text, match",
    [
        ("", "sets nothing"),
        ("# nothing but a comment\n", "sets nothing"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("just a string\n", "key .just a string.: Key .just a string. not in .Config."),
    ],
)
def test_empty_or_non_mapping_files_are_refused(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"c\.yaml: .*{match}"):
        load_config([path])


def test_interpolation_errors_name_the_file_and_key_in_one_line(tmp_path):
    good = tmp_path / "a.yaml"
    good.write_text("train:\n  seed: 3\n")
    bad = tmp_path / "b.yaml"
    bad.write_text("data:\n  root: ${nope.x}\n")
    with pytest.raises(ConfigError) as err:
        load_config([good, bad])
    msg = str(err.value)
    assert (
        "\n" not in msg
        and msg.startswith(f"{bad}: interpolation failed: key 'data.root'")
        and "nope.x" in msg
    )
    with pytest.raises(ConfigError, match=r"^command line: interpolation failed: key 'data.root'"):
        load_config([good], ["data.root=${oops}"])
    # an interpolation on the command line may refer to other keys, as in a file
    assert load_config([], ["data.root=${data.name}_copy"]).data.root == "synthetic_copy"


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.threads=-5", r"train.threads=-5 is out of range: must be ≥ 0"),
        ("eval.threads=-1", r"eval.threads=-1 is out of range"),
        ("train.max_iters=0", r"train.max_iters=0 is out of range: must be ≥ 1"),
        ("train.batch_size=-2", r"train.batch_size=-2"),
        ("data.crop_size=[96,0]", r"data.crop_size=\[96, 0\] is out of range"),
        ("data.flip_prob=1.5", r"data.flip_prob=1.5 is out of range: must be between 0 and 1"),
        ("model.dropout=1.0", r"model.dropout=1.0"),
        ("train.lr=0", r"train.lr=0"),
        ("bench.repeats=0", r"bench.repeats=0"),
        ("data.synthetic.num_val=0", r"data.synthetic.num_val=0"),
        ("train.seed=-1", r"train.seed=-1"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=rf"^command line: {match}"):
        load_config([], [override])


def test_out_of_range_value_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("train:\n  threads: -5\n")
    with pytest.raises(ConfigError, match=rf"^{path}: train.threads=-5 is out of range"):
        load_config([path])


def test_every_range_key_exists_in_the_schema():
    from omegaconf import OmegaConf

    from fsanet.config import RANGES, Config

    schema = OmegaConf.structured(Config)
    for key in RANGES:
        assert OmegaConf.select(schema, key, default="<absent>") != "<absent>", key


def test_every_shipped_params_file_loads():
    from pathlib import Path

    for path in sorted(Path("params").glob("*/*.yaml")):
        if path.parent.name != "profiles":
            load_config([path])
