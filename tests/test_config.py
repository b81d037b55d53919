"""Config tree: YAML loading, --set overrides and errors that name the key."""

import pytest

from icdistill.config import Config, load_config, parse_override
from icdistill.demo import demo_config_path
from icdistill.errors import ConfigError


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_follow_the_papers_protocol():
    cfg = Config()
    assert cfg.solver.max_iter == 90000 and cfg.solver.ims_per_batch == 16
    assert cfg.distill.warmup_iters is None and cfg.distill.icd.fake_ratio == 5
    assert cfg.distill.lr == 1e-4 and cfg.distill.grad_clip_norm == 0.01


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "model:\n  backbone: resnet18\nsolver:\n  max_iter: 100\n")
    cfg = load_config(path, ["solver.max_iter=7", "distill.method=icd", "data.min_sizes=[100, 120]"])
    assert cfg.model.backbone == "resnet18"
    assert cfg.solver.max_iter == 7
    assert cfg.distill.method == "icd"
    assert cfg.data.min_sizes == (100, 120)


def test_unknown_key_names_key_and_valid_keys(tmp_path):
    path = write(tmp_path, "solver:\n  max_iters: 100\n")
    with pytest.raises(ConfigError, match=r"solver\.max_iters.*max_iter"):
        load_config(path)


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"solver\.max_iter.*integer"):
        load_config(None, ["solver.max_iter=abc"])


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match=r"model\.family.*retinanet, fcos, faster_rcnn"):
        load_config(None, ["model.family=yolo"])


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_override_syntax():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_base_include_and_relative_paths(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "train.json").write_text("{}")
    write(tmp_path, "data:\n  train_ann: ann/train.json\n  test_ann: elsewhere.json\nsolver:\n  max_iter: 5\n", "base.yaml")
    path = write(tmp_path, "_base_: base.yaml\nsolver:\n  ims_per_batch: 2\n")
    cfg = load_config(path)
    assert cfg.solver.max_iter == 5 and cfg.solver.ims_per_batch == 2
    assert cfg.data.train_ann == str((tmp_path / "ann/train.json").resolve())
    assert cfg.data.test_ann == "elsewhere.json"  # nothing there: relative to the working directory


def test_round_trip_through_dict():
    cfg = load_config(demo_config_path("icd"))
    from icdistill.config import config_from_dict

    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.distill.method == "icd"
    assert cfg.solver.max_iter == load_config(demo_config_path("student")).solver.max_iter
