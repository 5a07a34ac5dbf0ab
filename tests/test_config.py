"""Configs: presets, overrides, files and the errors users see."""

import json

import pytest

from fluid.cli import main
from fluid.config import (
    PRESETS,
    VARIANTS,
    ConfigError,
    FluidConfig,
    LRSchedule,
    Order,
    TokenType,
    apply_overrides,
    get_preset,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_json(name, tmp_path):
    cfg = get_preset(name)
    cfg.save(tmp_path / "c.json")
    assert FluidConfig.load(tmp_path / "c.json") == cfg


def test_variant_switch_and_lr_schedule_defaults():
    for v in VARIANTS:
        cfg = get_preset("debug", variant=v)
        assert cfg.model.variant == v
        assert cfg.lr_schedule == (LRSchedule.COSINE if v.startswith("discrete") else LRSchedule.CONSTANT)
    cfg = get_preset("debug", variant="discrete-raster")
    assert cfg.model.token_type == TokenType.DISCRETE and cfg.model.order == Order.RASTER


def test_overrides_are_typed_and_checked():
    cfg = apply_overrides(
        get_preset("debug"),
        [
            "model.width=128",
            "train.lr=3e-4",
            "train.betas=[0.9, 0.99]",
            "data.holdout=true",
            "sample.cfg_schedule=constant",
        ],
    )
    assert cfg.model.width == 128 and cfg.train.lr == 3e-4 and cfg.train.betas == (0.9, 0.99)
    assert cfg.data.holdout is True and cfg.sample.cfg_schedule.value == "constant"
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        apply_overrides(cfg, ["model.widht=3"])
    with pytest.raises(ConfigError, match="unknown config section"):
        apply_overrides(cfg, {"modle.width": 3})
    with pytest.raises(ConfigError, match="bad value"):
        apply_overrides(cfg, ["model.order=spiral"])
    with pytest.raises(ConfigError, match="divisible"):
        apply_overrides(cfg, ["model.width=65"])
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("fluid-huge")
    with pytest.raises(ConfigError, match="unknown variant"):
        get_preset("debug", variant="continuous-spiral")


def test_config_files_reject_unknown_keys(tmp_path):
    d = get_preset("debug").to_dict()
    d["train"]["learning_rate"] = 1.0
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="train.learning_rate"):
        FluidConfig.load(tmp_path / "bad.json")
    (tmp_path / "short.yaml").write_text("preset: debug\noverrides:\n  model.width: 128\n")
    assert FluidConfig.load(tmp_path / "short.yaml").model.width == 128


def test_cli_reports_config_errors_without_a_traceback(tmp_path, capsys):
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["train", "--preset", "debug", "--set", "model.depthh=3", "--out", str(tmp_path / "r")]) == 2
    assert "model.depthh" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing was created
