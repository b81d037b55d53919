"""Pascal VOC readers: VOC-layout folders (and VOCdevkit 07+12 joins) to an in-memory COCO dict.

Plain folders of images and XMLs (no ``ImageSets``) are read by :mod:`icdistill.data.voc_folder`
with the XML parser and the conversion here.

The dict is served by :meth:`icdistill.data.coco.CocoDetection.from_dict`, so transforms, the
prior, the report, COCO evaluation and training work unchanged::

    coco_dict, image_root = load_voc("/data/bccd", ("trainval",))
    train = CocoDetection.from_dict(coco_dict, image_root, transforms, source="bccd trainval")

Box formats:

* VOC XML ``bndbox`` is ``xmin, ymin, xmax, ymax`` in **1-based inclusive** pixel coordinates;
* the COCO dict gets ``bbox = [x, y, w, h]`` in 0-based continuous pixels, converted as
  detectron2 does: ``x1 = xmin - 1``, ``y1 = ymin - 1``, ``x2 = xmax``, ``y2 = ymax``, so
  ``[x, y, w, h] = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``.

Difficult objects (``<difficult>1</difficult>``) are stored with ``"difficult": 1`` and, unless
``keep_difficult``, ``"iscrowd": 1``: :class:`CocoDetection` then leaves them out of the training
targets, pycocotools ignores them as crowd regions and
:class:`icdistill.evaluation.voc.VOCEvaluator` ignores them as VOC difficult objects. With
``keep_difficult=True`` they are ordinary annotations (``iscrowd`` 0, still ``difficult`` 1, so
the VOC evaluator still ignores them).

Images get ids 1..N in load order and keep their VOC id as ``"voc_id"``; annotations get ids
1..M; categories get ids 1..C in class order.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from ..errors import DataError
from .layouts import IMAGE_EXTS

__all__ = ["VOC_CLASSES", "VOCObject", "VOCRecord", "image_file_of", "load_voc", "parse_voc_xml",
           "records_to_coco", "resolve_classes"]

log = logging.getLogger(__name__)

#: The 20 Pascal VOC class names, in the standard order (category ids 1..20).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)



@dataclass
class VOCObject:
    """One ``<object>`` of a VOC XML: ``box`` is ``(xmin, ymin, xmax, ymax)`` 1-based inclusive."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass
class VOCRecord:
    """A parsed VOC XML: ``filename`` as written in it (may be empty), size in pixels."""

    xml_path: Path
    filename: str
    width: int
    height: int
    objects: list[VOCObject] = field(default_factory=list)


def parse_voc_xml(path: str | os.PathLike, *, need_size: bool = True) -> VOCRecord:
    """Parse one VOC annotation file.

    Returns:
        A :class:`VOCRecord`; object boxes stay in VOC's 1-based inclusive
        ``(xmin, ymin, xmax, ymax)``. A missing ``<difficult>`` means 0. Without ``need_size``
        a missing, malformed or non-positive size gives width = height = 0 (the caller reads
        the image instead).

    Raises:
        DataError: naming the file, when it is not well-formed XML, lacks a positive integer
            ``size/width`` and ``size/height`` (with ``need_size``), or has an object without
            a ``name`` or with a missing / non-numeric ``bndbox`` coordinate.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, LookupError, ValueError) as e:  # LookupError: unknown encoding
        raise DataError(f"VOC annotation {path} is not well-formed XML: {e}") from e
    except OSError as e:
        raise DataError(f"cannot read VOC annotation {path}: {e}") from e
    size = root.find("size")
    try:
        if size is None:
            raise ValueError("no <size> element")
        width = int(float(_text(size, "width")))
        height = int(float(_text(size, "height")))
    except (ValueError, OverflowError) as e:
        if not need_size:
            width = height = 0
        else:
            raise DataError(f"VOC annotation {path}: missing or malformed image size "
                            f"(size/width, size/height): {e}") from e
    if need_size and (width <= 0 or height <= 0):
        raise DataError(f"VOC annotation {path}: non-positive image size {width}x{height}")
    rec = VOCRecord(path, (root.findtext("filename") or "").strip(), width, height)
    for k, obj in enumerate(root.findall("object")):
        try:
            name = _text(obj, "name")
            bb = obj.find("bndbox")
            if bb is None:
                raise ValueError("no <bndbox> element")
            box = tuple(float(_text(bb, t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            if not all(math.isfinite(v) for v in box):
                raise ValueError(f"non-finite coordinate in {box}")
            diff_text = (obj.findtext("difficult") or "0").strip() or "0"
            difficult = bool(int(float(diff_text)))
        except (ValueError, OverflowError) as e:
            raise DataError(f"VOC annotation {path}: object #{k + 1} is malformed: {e}") from e
        rec.objects.append(VOCObject(name, box, difficult))  # type: ignore[arg-type]
    return rec


def _text(elem: ET.Element, tag: str) -> str:
    value = elem.findtext(tag)
    if value is None or not value.strip():
        raise ValueError(f"missing <{tag}>")
    return value.strip()


def _voc_box_to_coco(box: tuple[float, float, float, float]) -> list[float]:
    """VOC 1-based inclusive (xmin, ymin, xmax, ymax) -> COCO 0-based [x, y, w, h].

    A box with xmax <= xmin or ymax <= ymin is a broken annotation (a point or a line, as two
    of BCCD's are), not a one-pixel object: it keeps zero width/height so that the dataset drops
    it as degenerate and reports it by file name.
    """
    xmin, ymin, xmax, ymax = box
    x1, y1 = xmin - 1.0, ymin - 1.0
    if xmax <= xmin or ymax <= ymin:
        return [x1, y1, max(xmax - xmin, 0.0), max(ymax - ymin, 0.0)]
    return [x1, y1, xmax - x1, ymax - y1]


def resolve_classes(
    class_names: Sequence[str] | None, found: Sequence[str], fallback: Sequence[str] | None = None
) -> list[str]:
    """Given names, else the 20 VOC names if every name found fits them, else sorted names."""
    if class_names is not None:
        names = [str(n) for n in class_names]
        if not names:
            raise DataError("class_names is empty")
        if len(set(names)) != len(names):
            raise DataError(f"class_names has duplicates: {names}")
        return names
    if set(found) <= set(VOC_CLASSES):
        return list(VOC_CLASSES)
    return sorted(set(fallback if fallback is not None else found))


def records_to_coco(
    records: Sequence[tuple[int, str, VOCRecord]],
    class_names: list[str],
    keep_difficult: bool,
    extra: Sequence[dict[str, Any]] | None = None,
) -> dict:
    """COCO dict from ``(image id, file name relative to the image root, record)`` triples.

    Boxes: VOC's 1-based inclusive ``bndbox`` becomes COCO ``[x, y, w, h]`` in 0-based pixels.
    Category ``k + 1`` is ``class_names[k]``; objects of other classes are left out (logged).
    Difficult objects are crowd (ignore regions) unless ``keep_difficult``; ``extra[i]`` is
    merged into image entry ``i`` (e.g. ``{"voc_id": ...}``).
    """
    cat_of = {n: i + 1 for i, n in enumerate(class_names)}
    images, annotations = [], []
    dropped: Counter[str] = Counter()
    for k, (img_id, file_name, rec) in enumerate(records):
        img = {"id": img_id, "file_name": file_name, "width": rec.width, "height": rec.height}
        if extra is not None:
            img.update(extra[k])
        images.append(img)
        for obj in rec.objects:
            cat = cat_of.get(obj.name)
            if cat is None:
                dropped[obj.name] += 1
                continue
            bbox = _voc_box_to_coco(obj.box)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": img_id,
                "category_id": cat,
                "bbox": bbox,
                "area": max(bbox[2], 0.0) * max(bbox[3], 0.0),
                "iscrowd": int(obj.difficult and not keep_difficult),
                "difficult": int(obj.difficult),
            })
    if dropped:
        log.info("VOC: left out %d objects of classes not in class_names: %s",
                 sum(dropped.values()), dict(sorted(dropped.items())))
    categories = [{"id": i + 1, "name": n, "supercategory": "none"}
                  for i, n in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def image_file_of(jpeg_dir: Path, stem: str, xml_filename: str) -> str:
    """Name of the image of ``stem`` in ``jpeg_dir``: ``<stem>.jpg`` (VOC's rule) if it exists,
    else the XML's ``<filename>`` if that exists, else ``<stem>`` with another image extension
    found, else ``<stem>.jpg`` (then :class:`CocoDetection` reports the missing file)."""
    # os.path.isfile, not Path.is_file: a <filename> too long for the file system is a name
    # that does not exist, not an OSError.
    default = f"{stem}.jpg"
    if os.path.isfile(jpeg_dir / default):
        return default
    if xml_filename and os.path.isfile(jpeg_dir / xml_filename):
        return xml_filename
    for ext in IMAGE_EXTS:
        for cand in (stem + ext, stem + ext.upper()):
            if os.path.isfile(jpeg_dir / cand):
                return cand
    return default


def _all_names(ann_dir: Path) -> set[str]:
    """Object names over every XML of ``ann_dir``; files that do not parse are skipped here
    (they raise when they are part of a loaded split)."""
    names: set[str] = set()
    for xml in sorted(ann_dir.glob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, LookupError, ValueError, OSError):
            continue
        for obj in root.findall("object"):
            n = (obj.findtext("name") or "").strip()
            if n:
                names.add(n)
    return names


def load_voc(
    root: str | os.PathLike,
    splits: Sequence[str] = ("trainval",),
    *,
    years: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    keep_difficult: bool = False,
) -> tuple[dict, Path]:
    """Read Pascal VOC splits into a COCO dict.

    Layout of a VOC folder: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``,
    ``ImageSets/Main/<split>.txt`` (one id per line). With ``years`` (e.g. ``("2007", "2012")``
    or ``("VOC2007", "VOC2012")``), ``root`` is a VOCdevkit folder holding ``VOC2007/``,
    ``VOC2012/``, ... and the ``splits`` of every year are joined (the "07+12" training set).

    Args:
        root: the VOC folder, or the VOCdevkit folder when ``years`` is given.
        splits: split names, read from ``ImageSets/Main/<split>.txt``; ids listed twice are
            loaded once.
        years: VOC years to join, or ``None`` for a single VOC folder.
        class_names: class order (category ids 1..C); objects of other classes are left out.
            Default: the 20 VOC names when every object of the loaded splits is one of them,
            else the sorted set of object names over every XML of the ``Annotations`` folder(s)
            (not only the loaded splits, so that train and test splits get the same classes).
        keep_difficult: keep difficult objects as training targets (``iscrowd`` 0).

    Returns:
        ``(coco_dict, image_root)``: images' ``file_name`` are relative to ``image_root``,
        which is ``root/JPEGImages`` (file names ``<id>.jpg``) for a single VOC folder, or
        ``root`` (file names ``VOC2007/JPEGImages/<id>.jpg``) with ``years``. Boxes are COCO
        ``[x, y, w, h]`` 0-based pixels (see the module docstring); each annotation also has
        ``difficult`` (0/1), each image ``voc_id`` (its id in the split file, prefixed by
        ``VOC<year>/`` with ``years``).

    Raises:
        DataError: ``root``, an ``Annotations`` folder or a split file is missing (the path is
            named); a split lists an id without an XML (id and path named); an XML is broken
            or lacks the image size (file named).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"VOC folder not found: {root}")
    if isinstance(splits, str):
        splits = (splits,)
    if not splits:
        raise DataError("load_voc: no split given")
    folders, image_root = _voc_folders(root, years)
    loaded: list[tuple[str, str, VOCRecord]] = []  # (voc id, file name, record)
    seen: set[str] = set()
    for folder, prefix in folders:
        ann_dir = folder / "Annotations"
        if not ann_dir.is_dir():
            raise DataError(f"VOC annotations folder not found: {ann_dir}")
        for split in splits:
            loaded += _load_voc_split(folder, prefix, split, seen)
    names = _voc_class_names(class_names, loaded, folders)
    records = [(i + 1, fn, rec) for i, (_, fn, rec) in enumerate(loaded)]
    extra = [{"voc_id": key} for key, _, _ in loaded]
    return records_to_coco(records, names, keep_difficult, extra), image_root


def _voc_folders(root: Path, years: Sequence[str] | None) -> tuple[list[tuple[Path, str]], Path]:
    """``([(VOC folder, file name prefix)], image root)`` of a VOC folder (``years`` None) or of
    the year folders ``VOC<year>/`` of a VOCdevkit (prefix ``VOC<year>/``, image root ``root``)."""
    if years is None:
        return [(root, "")], root / "JPEGImages"
    if isinstance(years, str):
        years = (years,)
    if not years:
        raise DataError("load_voc: years is empty")
    folders = []
    for y in years:
        sub = str(y) if str(y).startswith("VOC") else f"VOC{y}"
        if not (root / sub).is_dir():
            raise DataError(f"VOCdevkit {root}: year folder not found: {root / sub}")
        folders.append((root / sub, f"{sub}/"))
    return folders, root


def _split_ids(split_file: Path, split: str) -> list[str]:
    """The ids of ``ImageSets/Main/<split>.txt``: the first word of each non-empty line."""
    if not split_file.is_file():
        raise DataError(f"VOC split file not found: {split_file} (split '{split}')")
    try:
        lines = split_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read VOC split file {split_file}: {e}") from e
    return [parts[0] for parts in (line.split() for line in lines) if parts]


def _load_voc_split(
    folder: Path, prefix: str, split: str, seen: set[str]
) -> list[tuple[str, str, VOCRecord]]:
    """``(voc id, file name, record)`` of each id of ``split`` in ``folder`` not in ``seen``
    (``seen`` is updated; voc ids and file names carry ``prefix``)."""
    split_file = folder / "ImageSets" / "Main" / f"{split}.txt"
    ann_dir, jpeg_dir = folder / "Annotations", folder / "JPEGImages"
    loaded = []
    for stem in _split_ids(split_file, split):
        key = prefix + stem
        if key in seen:
            continue
        seen.add(key)
        xml = ann_dir / f"{stem}.xml"
        if not xml.is_file():
            raise DataError(f"VOC split {split_file} lists '{stem}' but its annotation "
                            f"{xml} does not exist")
        rec = parse_voc_xml(xml)
        file_name = prefix + ("JPEGImages/" if prefix else "") + image_file_of(
            jpeg_dir, stem, rec.filename)
        loaded.append((key, file_name, rec))
    return loaded


def _voc_class_names(
    class_names: Sequence[str] | None,
    loaded: Sequence[tuple[str, str, VOCRecord]],
    folders: Sequence[tuple[Path, str]],
) -> list[str]:
    """:func:`resolve_classes` over the loaded objects; the fallback (names of every XML of the
    folders) is only read when it can be needed, as it parses all of them."""
    found = sorted({o.name for _, _, rec in loaded for o in rec.objects})
    fallback = None
    if class_names is None and not set(found) <= set(VOC_CLASSES):
        fallback = sorted(set().union(*(_all_names(f / "Annotations") for f, _ in folders)))
    return resolve_classes(class_names, found, fallback)
