"""The format registry and its config sections: ``data.format`` -> ``data.<format>``, and the
older flat ``data`` keys still loading (moved into the format's section)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from icdistill import config as config_module
from icdistill.config import DATA_FORMATS, DataConfig, load_config
from icdistill.data.formats import FORMATS
from icdistill.errors import ConfigError

CONFIGS = Path(config_module.__file__).parent / "configs"


def test_every_format_has_a_reader_and_its_own_section():
    assert set(FORMATS) == set(DATA_FORMATS)
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    for fmt in DATA_FORMATS:
        assert fmt in fields
        cfg = DataConfig(format=fmt)
        assert cfg.section is getattr(cfg, fmt)


def test_shipped_configs_use_the_sections():
    flat = set(config_module._FLAT_DATA_KEYS)
    for path in sorted(CONFIGS.rglob("*.yaml")):
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        assert not flat & set(data), f"{path} uses the flat keys {sorted(flat & set(data))}"


def test_flat_keys_of_older_configs_move_into_the_format_section(tmp_path, caplog):
    (tmp_path / "cells").mkdir()
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  format: voc_folder\n  root: cells\n  image_dir: pics\n"
                   "  train_splits: [trainval]\n  test_fraction: 0.5\n  train_ann: ''\n")
    with caplog.at_level(logging.WARNING, logger="icdistill.config"):
        cfg = load_config(old)
    section = cfg.data.voc_folder
    assert section.root == str((tmp_path / "cells").resolve())  # still relative to the file
    assert (section.image_dir, section.test_fraction) == ("pics", 0.5)
    assert section.train_splits is None  # the old default meant "find the split folders"
    assert "'data.image_dir' is now 'data.voc_folder.image_dir'" in caplog.text
    # the same through --set, on a config written with the sections
    new = tmp_path / "new.yaml"
    new.write_text("data:\n  format: voc\n  voc:\n    train_splits: [train]\n")
    cfg = load_config(new, ["data.root=/data/voc", "data.test_splits=[val]"])
    assert (cfg.data.voc.root, cfg.data.voc.train_splits, cfg.data.voc.test_splits) == \
        ("/data/voc", ("train",), ("val",))


def test_flat_key_the_format_does_not_read_or_set_twice_names_the_new_key():
    with pytest.raises(ConfigError, match=r"'data\.names_file' is not read by data\.format "
                                          r"'voc'.*data\.yolo\.names_file"):
        load_config(None, ["data.format=voc", "data.names_file=x.yaml"])
    with pytest.raises(ConfigError, match=r"'data\.root' and 'data\.voc\.root' are both set; "
                                          r"keep 'data\.voc\.root'"):
        load_config(None, ["data.format=voc", "data.voc.root=/a", "data.root=/b"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.coco\.root'"):
        load_config(None, ["data.coco.root=/a"])


def test_location_names_the_data_of_the_chosen_format():
    cfg = load_config(None, ["data.coco.train_ann=/d/train.json"])
    assert cfg.data.location == "/d/train.json"
    cfg = load_config(None, ["data.format=yolo", "data.yolo.root=/d/yolo"])
    assert cfg.data.location == "/d/yolo"
