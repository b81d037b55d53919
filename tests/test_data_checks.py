"""What users bring that the readers used to let through: images that do not decode in full
(a truncated JPEG passes a header check), class names spelled two ways, and the image check's
cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL
from PIL import Image
from test_voc import H, W, _xml

from icdistill.cli import main
from icdistill.config import DataConfig, VOCFolderDataConfig, load_config
from icdistill.data import CocoDetection, build_datasets, data_report, image_check
from icdistill.errors import ConfigError, DataError

SIZES = dict(min_sizes=(32,), max_size=64, test_size=32)


def _jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _truncate(path: Path) -> None:
    """Cut a JPEG short: its header still opens and verifies, its pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as im:
        im.verify()  # what the old start-of-run check did: it passes
    with pytest.raises(OSError, match="truncated"), Image.open(path) as im:
        im.load()


def _split_folder(folder: Path, stems: str, names: dict[str, str] | None = None) -> None:
    """``images/`` + ``annots/`` (a name no layout lists): one JPEG + XML per stem, class
    ``names.get(stem, "RBC")``."""
    for k, s in enumerate(stems):
        _jpeg(folder / "images" / f"{s}.jpg", seed=k)
        (folder / "annots").mkdir(parents=True, exist_ok=True)
        name = (names or {}).get(s, "RBC")
        (folder / "annots" / f"{s}.xml").write_text(_xml(f"{s}.jpg", [(name, (2, 3, 30, 20), 0)]))


def _build(root: Path, **keys):
    common = {k: keys.pop(k) for k in ("skip_unreadable",) if k in keys}
    return build_datasets(DataConfig(format="voc_folder", voc_folder=VOCFolderDataConfig(
        root=str(root), **keys), **SIZES, **common), with_masks=False, progress=False)


@pytest.mark.parametrize("split", ["train", "test"])
def test_truncated_jpeg_found_before_training_or_skipped(tmp_path, split):
    _split_folder(tmp_path / "train", "abcd")
    _split_folder(tmp_path / "test", "ef")
    broken = tmp_path / split / "images" / ("b.jpg" if split == "train" else "f.jpg")
    _truncate(broken)
    with pytest.raises(DataError, match=rf"{broken.name}: cannot decode: .*truncated.*"
                                        r"data\.skip_unreadable"):
        _build(tmp_path)
    train, test = _build(tmp_path, skip_unreadable=True)
    assert (len(train), len(test)) == ((3, 2) if split == "train" else (4, 1))
    report = data_report(train, test)[split]
    assert report["counts"]["unreadable_images"] == 1
    assert report["files"]["unreadable_images"] == [f"{split}/images/{broken.name}"]
    for ds in (train, test):  # every image left decodes
        for i in range(len(ds)):
            ds[i]


def test_image_size_differing_from_the_annotations_is_found_up_front(tmp_path):
    _split_folder(tmp_path / "train", "ab")
    _split_folder(tmp_path / "test", "c")
    Image.new("RGB", (W + 4, H), 0).save(tmp_path / "test" / "images" / "c.jpg")
    with pytest.raises(DataError, match=r"c\.jpg: is 52x32 \(w x h\) but the annotations say 48x32"):
        _build(tmp_path)


def test_decoded_images_are_remembered_per_file_version(tmp_path, monkeypatch):
    _split_folder(tmp_path, "abc")
    images = [(f"{s}.jpg", W, H) for s in "abc"]
    decoded: list[str] = []
    real = image_check.decode_problem

    def counting(path, width, height):
        decoded.append(Path(path).name)
        return real(path, width, height)

    monkeypatch.setattr(image_check, "decode_problem", counting)
    assert image_check.find_undecodable(tmp_path / "images", images) == {}
    assert sorted(decoded) == ["a.jpg", "b.jpg", "c.jpg"]
    cache = image_check.cache_file(tmp_path / "images")
    assert cache.is_file() and cache.is_relative_to(image_check.image_cache_dir())
    decoded.clear()
    assert image_check.find_undecodable(tmp_path / "images", images) == {}
    assert decoded == []  # a second run pays nothing
    _truncate(tmp_path / "images" / "b.jpg")  # a changed file is decoded again, and not cached
    for _ in range(2):
        problems = image_check.find_undecodable(tmp_path / "images", images)
        assert list(problems) == ["b.jpg"] and decoded[-1] == "b.jpg"
    cache.write_text("not json")  # a broken cache only costs the decode
    assert list(image_check.find_undecodable(tmp_path / "images", images)) == ["b.jpg"]


def _coco_with_names(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """One image per annotation, category ``names[k]`` for annotation k."""
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    Image.new("RGB", (W, H)).save(img_dir / "x.png")
    cats = sorted(set(names))
    data = {"images": [{"id": 1, "file_name": "x.png", "width": W, "height": H}],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(cats)],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": cats.index(n) + 1,
                             "bbox": [1, 1, 5, 5]} for k, n in enumerate(names)]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return img_dir, ann


def test_case_variant_class_reported_and_merged_by_alias(tmp_path):
    img_dir, ann = _coco_with_names(tmp_path, ["RBC"] * 5 + ["Rbc "] + ["WBC", "wbc.", "W B C"])
    ds = CocoDetection(img_dir, ann)
    assert ds.class_names == ["RBC", "Rbc ", "W B C", "WBC", "wbc."]
    assert ds.report["similar_class_names"] == [{"RBC": 5, "Rbc ": 1},
                                                {"W B C": 1, "WBC": 1, "wbc.": 1}]
    merged = CocoDetection(img_dir, ann, class_aliases={"Rbc ": "RBC", "wbc.": "WBC"})
    assert merged.class_names == ["RBC", "W B C", "WBC"]
    assert merged.report["merged_classes"] == {"Rbc ": {"into": "RBC", "annotations": 1},
                                               "wbc.": {"into": "WBC", "annotations": 1}}
    assert merged.report["similar_class_names"] == [{"WBC": 2, "W B C": 1}]
    _, target = merged[0]
    assert target["labels"].tolist() == [0] * 6 + [2, 2, 1]
    # an alias to a name the data lacks renames the class; two aliases of one name join it
    renamed = CocoDetection(img_dir, ann, class_aliases={"Rbc ": "rbc", "RBC": "rbc"})
    assert renamed.class_names[0] == "rbc" and "RBC" not in renamed.class_names
    assert renamed.coco.getCatIds() == [2, 3, 4, 5]  # the first alias's category is kept
    assert len(renamed.coco.getAnnIds(catIds=[2])) == 6


def test_class_aliases_config_checks():
    cfg = load_config(None, ['data.class_aliases={"Rbc ": RBC}'])
    assert cfg.data.class_aliases == {"Rbc ": "RBC"}
    with pytest.raises(ConfigError, match="data.class_aliases' must be a mapping"):
        load_config(None, ["data.class_aliases=[a, b]"])
    for aliases, said in (({"a": "b", "b": "c"}, "itself an alias"), ({"a": "a"}, "maps to itself")):
        with pytest.raises(ConfigError, match=said):
            build_datasets(DataConfig(format="voc_folder", voc_folder=VOCFolderDataConfig(root="/nowhere"),
                                      class_aliases=aliases),
                           with_masks=False)


def test_stats_names_similar_classes_and_the_chosen_folders(tmp_path, empty_config, capsys):
    _split_folder(tmp_path / "train", "abcd", names={"d": "Rbc "})  # the XML reader strips
    _split_folder(tmp_path / "test", "ef")
    sets = ["--set=data.format=voc_folder", f"--set=data.voc_folder.root={tmp_path}",
            "--set=data.min_sizes=[32]", "--set=data.test_size=32",
            "--set=data.max_size=64"]
    out = tmp_path / "prior.json"
    assert main(["--no-progress", "stats", str(empty_config), "--out", str(out), *sets]) == 0
    text = capsys.readouterr().out
    assert "similar class names 'RBC' (3), 'Rbc' (1): if they are one class, set " \
           "data.class_aliases: {'Rbc': 'RBC'}" in text
    assert "train/images/ + train/annots/ (found by content" in text
    sets.append("--set=data.class_aliases={Rbc: RBC}")
    assert main(["--no-progress", "stats", str(empty_config), "--out", str(out), *sets]) == 0
    text = capsys.readouterr().out
    assert "class 'Rbc' merged into 'RBC' (1 annotations; data.class_aliases)" in text
    assert "similar class names" not in text and "| RBC | 4 | 4 | 2 | 2 |" in text


def test_train_with_a_truncated_test_image_stops_before_the_first_step_or_skips_it(
        tmp_path, empty_config, capsys):
    data = tmp_path / "data"
    _split_folder(data / "train", "abcd")
    _split_folder(data / "test", "ef")
    _truncate(data / "test" / "images" / "f.jpg")
    sets = [f"--set={s}" for s in (
        "data.format=voc_folder", f"data.voc_folder.root={data}", "data.min_sizes=[32]",
        "data.test_size=32", "data.max_size=64", *TINY_MODEL, "solver.max_iter=2",
        "solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.checkpoint_period=2",
        "eval.batch_size=2", "eval.viz_images=0", "eval.report=false")]
    out = tmp_path / "run"
    assert main(["--no-progress", "train", str(empty_config), "--out", str(out), *sets]) == 2
    assert "f.jpg: cannot decode" in capsys.readouterr().err
    # no step was taken: nothing but the config was written
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["config.yaml"]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(out), *sets,
                 "--set=data.skip_unreadable=true"]) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["test"]["files"]["unreadable_images"] == ["test/images/f.jpg"]
    assert (out / "detector.pt").is_file()


def test_image_broken_during_the_run_is_replaced_and_counted(tmp_path):
    _split_folder(tmp_path / "train", "abc")
    _split_folder(tmp_path / "test", "d")
    train, _ = _build(tmp_path, skip_unreadable=True)
    assert train.report["counts"]["unreadable_images"] == 0
    _truncate(tmp_path / "train" / "images" / "b.jpg")  # after the start-of-run check
    _, target = train[1]
    assert target["image_id"] == train.image_ids[2]  # the next readable image
    assert train.report["counts"]["unreadable_images"] == 1
    assert train.report["files"]["unreadable_images"] == ["train/images/b.jpg"]
