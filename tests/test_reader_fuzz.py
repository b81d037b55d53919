"""The dataset readers on generated and mutated inputs (hypothesis): VOC XML, COCO json, YOLO txt
labels and Ultralytics data yaml files that are truncated, of wrong types, with negative / NaN /
huge coordinates, missing fields, other encodings or garbage bytes. Every input gives a dataset
(whose items load, or fail with a DataError) or a DataError naming the file; never another
exception.

Runs are derandomised (the same examples every time, so CI cannot flake);
``ICDISTILL_FUZZ_EXAMPLES=2000`` explores more, with fresh random examples.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from icdistill.data import CocoDetection
from icdistill.data.voc_folder import read_voc_folder
from icdistill.data.yolo import find_data_yaml, read_yolo, read_yolo_yaml, yaml_split_keys
from icdistill.errors import DataError

W, H = 8, 6  # every image on disk
_MORE = int(os.environ.get("ICDISTILL_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_MORE or 50, deadline=None, database=None, derandomize=not _MORE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- building blocks ---------------------------------------------------------------------------
# Inputs are mostly well-formed with a few broken parts, so that the readers' deeper checks
# (boxes, classes, segmentations, items) are reached, not only the parsers'.

NUMBER_TEXT = st.one_of(
    st.integers(-3, 60).map(str),
    st.integers(-10**30, 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "", " ", "abc", "1,5", "0x10",
                     "１２", "4.0", "1e3", "2" * 400]),
    st.text(max_size=6),
)
JSON_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 60), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.lists(st.integers(-2, 9), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` four times in five, else ``bad`` (``good`` is the simplest choice, so that
    hypothesis shrinks a failure to the one broken part)."""
    return st.integers(0, 4).flatmap(lambda k: bad if k == 4 else good)


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` as is (mostly), truncated, with bytes flipped / inserted, re-encoded, or garbage."""
    kind = draw(st.sampled_from(["keep"] * 10 + ["truncate", "flip", "insert", "utf16",
                                                 "latin1", "bom", "garbage"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind in ("flip", "insert") and data:
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=4))
        return data[:at] + junk + data[at + (len(junk) if kind == "flip" else 0):]
    if kind == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16")
    if kind == "latin1":
        return data.decode("utf-8", "replace").encode("latin-1", "replace")
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "garbage":
        return draw(st.binary(max_size=200))
    return data


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (200, 40, 90)).save(path)
    return path


def _load_items(ds: CocoDetection) -> None:
    """Every item loads or fails with a DataError naming its image."""
    for i in range(len(ds)):
        try:
            ds[i]
        except DataError as e:
            assert str(ds.image_dir) in str(e), e


# -- VOC XML -----------------------------------------------------------------------------------


def _tag(draw, name: str, text: str, clean: bool) -> str:
    """``<name>text</name>``, escaped, or (when not ``clean``, sometimes) raw or left out."""
    how = "escaped" if clean else draw(st.sampled_from(["escaped"] * 12 + ["raw", "missing"]))
    if how == "missing":
        return ""
    return f"<{name}>{escape(text) if how == 'escaped' else text}</{name}>"


@st.composite
def voc_xml(draw) -> bytes:
    """A VOC annotation: half of them clean (boxes anywhere, also degenerate), the others with
    broken values, tags and bytes here and there."""
    clean = draw(st.booleans())

    def value(good: st.SearchStrategy, bad: st.SearchStrategy) -> str:
        return draw(good if clean else mostly(good, bad))

    size = "".join(_tag(draw, t, value(st.just(v), NUMBER_TEXT), clean)
                   for t, v in (("width", str(W)), ("height", str(H))))
    objects = []
    for _ in range(draw(st.integers(0, 3))):
        coords = "".join(_tag(draw, t, value(st.integers(-2, 12).map(str) | st.floats(-5, 15).map(repr),
                                             NUMBER_TEXT), clean)
                         for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append("<object>"
                       + _tag(draw, "name", value(st.sampled_from(["rbc", "wbc", "cat"]), st.text(max_size=5)), clean)
                       + _tag(draw, "difficult", value(st.sampled_from(["0", "1"]), NUMBER_TEXT), clean)
                       + (f"<bndbox>{coords}</bndbox>" if clean or draw(st.integers(0, 9)) != 9 else coords)
                       + "</object>")
    filename = value(st.just("a.png"), st.sampled_from(["b.png", "a.jpg", "", "../a.png", "x" * 300])
                     | st.text(max_size=10))
    head = draw(st.sampled_from(["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="utf-8"?>',
                                 '<?xml version="1.0" encoding="bogus"?>', '<?xml version="1.0" encoding="ascii"?>']))
    text = (f"{head}<annotation>{_tag(draw, 'filename', filename, clean)}<size>{size}</size>"
            f"{''.join(objects)}</annotation>")
    return text.encode("utf-8") if clean else draw(mutated(text.encode("utf-8")))


@FUZZ
@given(xmls=st.lists(voc_xml(), min_size=1, max_size=3), split_folders=st.booleans())
def test_voc_folder_reader(xmls: list[bytes], split_folders: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = [root / "train", root / "test"] if split_folders else [root]
        written = []
        for folder in folders:
            for k, data in enumerate(xmls):
                _image(folder / ("a.png" if k == 0 else f"{k}.png"))
                written.append(folder / ("a.xml" if k == 0 else f"{k}.xml"))
                written[-1].write_bytes(data)
        try:
            splits = read_voc_folder(root, test_fraction=0.5)
        except DataError as e:
            assert any(str(p) in str(e) for p in written), e
            return
        for name in ("train", "test"):
            try:
                ds = CocoDetection.from_dict(splits[name].coco, splits[name].image_root, source=tmp)
            except DataError as e:
                assert tmp in str(e), e
                continue
            _load_items(ds)


# -- COCO json ---------------------------------------------------------------------------------

ANY_ID = mostly(st.integers(0, 4), JSON_VALUE)
NUM = mostly(st.integers(-3, 12) | st.floats(-3, 12), JSON_VALUE | st.floats(-1e308, 1e308))
SEGMENTATION = st.one_of(
    st.just([]), st.just([[]]), st.none(), JSON_VALUE,
    st.lists(st.lists(NUM, max_size=10), max_size=2),
    st.lists(st.lists(st.floats(-2, 10), min_size=6, max_size=10), min_size=1, max_size=2),
    st.lists(st.lists(st.floats(-1e12, 1e12), min_size=6, max_size=8), min_size=1, max_size=1),
    st.fixed_dictionaries({"size": mostly(st.just([H, W]), JSON_VALUE),
                           "counts": st.one_of(st.text(alphabet="0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmno", max_size=12),
                                               st.lists(st.integers(-2, 50), max_size=6),
                                               st.sampled_from(["", "PP", "0", "o", "48", "`0"]), JSON_VALUE)}),
)


def _entry(fields: dict, p_missing: int = 12) -> st.SearchStrategy:
    """A dict of ``fields``, each present 11 times in 12."""
    return st.fixed_dictionaries({k: st.tuples(st.integers(0, p_missing - 1), v) for k, v in fields.items()}).map(
        lambda d: {k: v for k, (drop, v) in d.items() if drop != p_missing - 1})


IMAGE = _entry({"id": ANY_ID, "file_name": mostly(st.sampled_from(["a.png", "sub/b.png", "sub\\b.png"]),
                                                   st.sampled_from(["missing.png", ""]) | JSON_VALUE),
                "width": mostly(st.just(W), NUM), "height": mostly(st.just(H), NUM)}, p_missing=40)
ANNOTATION = _entry({
    "id": ANY_ID, "image_id": ANY_ID, "category_id": ANY_ID, "iscrowd": mostly(st.just(0), JSON_VALUE),
    "area": NUM, "segmentation": SEGMENTATION,
    "bbox": mostly(st.lists(NUM, min_size=4, max_size=4), JSON_VALUE | st.lists(NUM, max_size=6))})
CATEGORY = _entry({"id": ANY_ID, "name": mostly(st.sampled_from(["rbc", "wbc", "cells"]), JSON_VALUE),
                   "supercategory": st.sampled_from(["none", "cells"]) | JSON_VALUE}, p_missing=40)


@st.composite
def coco_json(draw) -> bytes:
    """A COCO document whose ids mostly refer to each other (ids from 0, 1 or sparse), with
    broken entries, values and structure here and there."""
    def fix(entry: dict, key: str, value: object) -> None:
        if draw(st.integers(0, 4)) != 4:  # else: this one stays as generated
            entry[key] = value

    cat_base, img_base, step = (draw(st.sampled_from(v)) for v in ([0, 1, 7], [0, 1, 100], [1, 1, 3]))
    cats = [draw(CATEGORY) for _ in range(draw(st.integers(1, 3)))]
    for k, c in enumerate(cats):
        fix(c, "id", cat_base + step * k)
    images = [draw(IMAGE) for _ in range(draw(st.integers(0, 2)))]
    for k, img in enumerate(images):
        fix(img, "id", img_base + k)
        fix(img, "file_name", ["a.png", "sub/b.png"][k])
    anns = [draw(ANNOTATION) for _ in range(draw(st.integers(0, 6)))]
    for a in anns:
        fix(a, "image_id", img_base + draw(st.integers(0, max(len(images) - 1, 0))))
        fix(a, "category_id", cat_base + step * draw(st.integers(0, len(cats) - 1)))
    doc: object = {"images": images, "annotations": anns, "categories": cats}
    for key, entries in doc.items():  # type: ignore[attr-defined]
        if entries and draw(st.integers(0, 9)) == 9:
            entries[draw(st.integers(0, len(entries) - 1))] = draw(JSON_VALUE)
    for key in ("images", "annotations", "categories"):
        if draw(st.integers(0, 29)) == 29:
            doc[key] = draw(JSON_VALUE)  # type: ignore[index]
        elif draw(st.integers(0, 29)) == 29:
            del doc[key]  # type: ignore[attr-defined]
    if draw(st.integers(0, 29)) == 29:
        doc = draw(st.lists(JSON_VALUE, max_size=2) | JSON_VALUE)
    return draw(mutated(json.dumps(doc).encode("utf-8")))


@FUZZ
@given(data=coco_json(), with_masks=st.booleans())
def test_coco_reader(data: bytes, with_masks: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        img_dir = Path(tmp) / "images"
        _image(img_dir / "a.png")
        _image(img_dir / "sub" / "b.png")
        ann = Path(tmp) / "ann.json"
        ann.write_bytes(data)
        try:
            ds = CocoDetection(img_dir, ann, with_masks=with_masks)
        except DataError as e:
            assert str(ann) in str(e) or str(img_dir) in str(e), e
            return
        _load_items(ds)
        list(ds.annotation_records())


# -- YOLO txt and data.yaml --------------------------------------------------------------------


@st.composite
def yolo_label(draw) -> bytes:
    """A YOLO label file: half of them clean (boxes and polygons anywhere, also outside the
    image or degenerate), the others with broken lines and bytes here and there."""
    clean = draw(st.booleans())

    def pick(good: st.SearchStrategy, bad: st.SearchStrategy):
        return draw(good if clean else mostly(good, bad))

    lines = []
    for _ in range(draw(st.integers(0, 4))):
        cls = pick(st.sampled_from(["0", "1", "0.0"]), st.sampled_from(["2", "-1", "1.5"]) | NUMBER_TEXT)
        count = pick(st.sampled_from([4, 4, 4, 6, 8]), st.integers(0, 9))
        values = [pick(st.floats(-0.2, 1.2).map(repr), NUMBER_TEXT) for _ in range(count)]
        lines.append(pick(st.just(" "), st.sampled_from(["\t", "  ", ","])).join([cls, *values]))
    text = "\n".join(lines).encode("utf-8")
    return text if clean else draw(mutated(text))


@FUZZ
@given(labels=st.lists(yolo_label(), min_size=1, max_size=3),
       names=mostly(st.just(b"rbc\nwbc\n"), st.sampled_from([b"", b"\xff\xfe", b"rbc"])))
def test_yolo_reader(labels: list[bytes], names: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written = [root / "classes.txt"]
        written[0].write_bytes(names)
        for k, data in enumerate(labels):
            _image(root / "images" / "train" / f"{k}.png")
            written.append(root / "labels" / "train" / f"{k}.txt")
            written[-1].parent.mkdir(parents=True, exist_ok=True)
            written[-1].write_bytes(data)
        try:
            got = read_yolo(root, split="train")
            ds = CocoDetection.from_dict(got.coco, got.image_root, source=tmp)
        except DataError as e:
            assert any(str(p) in str(e) for p in written) or tmp in str(e), e
            return
        _load_items(ds)


YAML_VALUE = st.one_of(
    st.sampled_from(["images/train", "../images/train", "train.txt", "missing/", "", "[a, b]",
                     "{x: 1}", "/abs/nowhere", "- images/train"]),
    st.text(max_size=8))


@st.composite
def data_yaml(draw) -> bytes:
    split = mostly(st.sampled_from(["images/train", "train.txt", "../images/train", "[images/train, train.txt]"]),
                   YAML_VALUE)
    keys = {"path": mostly(st.sampled_from([".", "", "/nowhere/on/this/machine"]), st.just("sub") | YAML_VALUE),
            "train": split, "val": split, "test": split,
            "nc": mostly(st.just("2"), st.sampled_from(["3", "x", "-1"])),
            "names": mostly(st.sampled_from(["[rbc, wbc]", "{0: rbc, 1: wbc}", "\n  0: rbc\n  1: wbc"]),
                            st.sampled_from(["{1: a, 2: b}", "{a: b}", "7", "[]"]) | YAML_VALUE)}
    lines = [f"{k}: {draw(v)}" for k, v in keys.items() if draw(st.integers(0, 5)) != 5]
    return draw(mutated("\n".join(lines).encode("utf-8")))


@FUZZ
@given(text=data_yaml())
def test_ultralytics_yaml_reader(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(2):
            _image(root / "images" / "train" / f"{k}.png")
            (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
            (root / "labels" / "train" / f"{k}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
        (root / "train.txt").write_text("./images/train/0.png\nimages/train/1.png\n")
        yaml_path = root / "data.yaml"
        yaml_path.write_bytes(text)
        try:
            found = find_data_yaml(root, None)
            if found is None:
                return  # not an Ultralytics yaml: the plain folder reader takes over
            for key in yaml_split_keys(found):
                got = read_yolo_yaml(found, key)
                _load_items(CocoDetection.from_dict(got.coco, got.image_root, source=tmp))
        except DataError as e:
            assert str(yaml_path) in str(e) or tmp in str(e), e


def test_fuzz_strategies_reach_valid_inputs() -> None:
    """The generators are not only garbage: their plain examples load as datasets."""
    good = b'<annotation><filename>a.png</filename><size><width>8</width><height>6</height></size>' \
           b'<object><name>rbc</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>8</xmax><ymax>6</ymax>' \
           b'</bndbox></object></annotation>'
    with tempfile.TemporaryDirectory() as tmp:
        _image(Path(tmp) / "a.png")
        (Path(tmp) / "a.xml").write_bytes(good)
        got = read_voc_folder(tmp, test_fraction=0.0)["train"]
        ds = CocoDetection.from_dict(got.coco, got.image_root)
        assert ds[0][1]["boxes"].tolist() == [[0.0, 0.0, 8.0, 6.0]]
    with pytest.raises(DataError, match=r"a\.xml"):
        with tempfile.TemporaryDirectory() as tmp:
            _image(Path(tmp) / "a.png")
            (Path(tmp) / "a.xml").write_bytes(good.replace(b"<xmin>1", b"<xmin>1e999"))
            read_voc_folder(tmp)
