"""COCO-format detection data set (real COCO, or anything written in its json format).

Items are ``(image, target)``:

* ``image``: float Tensor[3, h, w] in [0, 1], RGB, after the transforms (resize, flip);
* ``target``: ``{"boxes": float32 Tensor[N, 4] xyxy in pixels of the transformed image,
  "labels": int64 Tensor[N] contiguous class ids 0..C-1, "image_id": int (the json image id),
  "orig_size": (h, w) of the image on disk}``; with ``with_masks=True`` also ``"masks": uint8
  Tensor[N, h, w]`` (0/1), one instance mask per box, in pixels of the transformed image.

Annotations are checked once at construction, without reading any image: crowd annotations are
excluded from the targets, boxes leaving the image are clipped (counted as repaired), boxes with
zero width or height after clipping are dropped, and annotations of an unknown category are
dropped. :attr:`CocoDetection.report` holds the counts and the file names involved.

Instance masks (``with_masks=True``) are decoded per item from each kept annotation's
``segmentation``: polygons ``[[x1, y1, x2, y2, ...], ...]`` (0-based continuous pixels; parts
with fewer than 3 points are ignored), uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}``
or compressed RLE ``{"size": [h, w], "counts": str}``, through ``pycocotools.mask``. An
annotation without a segmentation (key missing, ``None``, ``[]``, or only polygons of fewer
than 3 points) gets its (clipped) box filled instead. A repaired (clipped) box keeps its mask.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .class_names import apply_class_aliases, describe_similar, similar_class_names
from .image_check import find_undecodable

__all__ = ["CocoDetection", "Transform"]

log = logging.getLogger(__name__)

#: A transform maps ``(image uint8 Tensor[3, H, W], target)`` to ``(image, target)``; see
#: :func:`icdistill.data.transforms.build_transforms`.
Transform = Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]]

_PROBLEMS = ("crowd", "repaired_boxes", "degenerate_boxes", "unknown_category",
             "unknown_image", "unreadable_images")


def _load_coco_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise DataError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {ann_file} is not valid json: {e}") from e
    except OSError as e:
        raise DataError(f"cannot read annotation file {ann_file}: {e}") from e
    return _check_coco_dict(data, f"annotation file {ann_file}")


def _check_coco_dict(data: Any, label: str) -> dict:
    """Check the top-level structure of a COCO dict; ``label`` starts each error message."""
    if not isinstance(data, dict):
        raise DataError(f"{label}: expected a json object with 'images', "
                        f"'annotations' and 'categories', got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{label}: missing or non-list key '{key}' "
                            f"(COCO detection format expected)")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{label}: 'annotations' must be a list")
    data.setdefault("annotations", [])
    if not data["categories"]:
        raise DataError(f"{label}: 'categories' is empty")
    return data


class CocoDetection(Dataset):
    """A COCO-format detection data set.

    Args:
        image_dir: folder holding the images named by ``file_name`` in the json.
        ann_file: COCO json (``images``, ``annotations``, ``categories``).
        transforms: callable ``(image uint8 Tensor[3, H, W], target) -> (image, target)`` where
            target boxes are float Tensor[N, 4] xyxy pixels; ``None`` only converts to float.
        skip_unreadable: if True, every image is decoded in full at construction (threaded,
            remembered per file: :mod:`icdistill.data.image_check`) and those missing, not
            decoding or of another size than the json says are left out of the data set
            (counted in :attr:`report` as ``unreadable_images``); an image that still fails to
            decode later (changed during the run) is replaced by the next readable one, with a
            warning, and counted too. If False (default) a bad image raises :class:`DataError`
            naming the file when it is loaded (:meth:`check_images` finds them all up front).
        with_masks: if True, each target also has ``masks``: uint8 Tensor[N, h, w] (0/1), mask
            i belonging to box i, in pixels of the transformed image, decoded from the kept
            annotations' ``segmentation`` (see the module docstring; box-filled when there is
            none). A malformed segmentation raises :class:`DataError` at construction, naming
            the image and annotation id. ``transforms`` must then accept ``target["masks"]``
            (as :class:`icdistill.data.transforms.DetectionTransforms` does) and keep it
            aligned with the boxes.
        progress: show a progress bar while ``skip_unreadable`` decodes the images.
        class_aliases: ``{alias: canonical name}``: each category named by an alias is merged
            into the canonical one (:func:`~icdistill.data.class_names.apply_class_aliases`),
            before anything else; names that still differ only in case, spaces or punctuation
            are reported (``report["similar_class_names"]``) and logged.

    Attributes:
        coco: the ``pycocotools.coco.COCO`` object (ground truth for the evaluator). Missing
            ``area`` / ``iscrowd`` / ``id`` fields are filled in (w·h, 0, running number).
        ann_file: path of the json (``None`` when built with :meth:`from_dict`).
        source: what error messages name: the json path, or ``from_dict``'s ``source``.
        image_dir: path of the image folder.
        class_names: category names ordered by contiguous id (categories sorted by COCO id).
        contiguous_to_cat_id: COCO category id of each contiguous id.
        cat_id_to_contiguous: the inverse mapping.
        image_ids: json image id of each item, in item order.
        with_masks: whether targets carry ``masks``.
        report: ``{"num_images", "num_annotations", "kept_annotations", "counts": {problem: n},
            "files": {problem: sorted file names}}``, problems being ``crowd``,
            ``repaired_boxes``, ``degenerate_boxes``, ``unknown_category``, ``unknown_image``
            and ``unreadable_images``; when found, also ``merged_classes`` (``{alias: {"into",
            "annotations"}}``) and ``similar_class_names`` (``[{name: annotations}]``).

    ``dataset[i]`` returns item i, using the global torch RNG for augmentation;
    ``dataset[(i, aug_seed)]`` runs the transforms under ``torch.random.fork_rng()`` seeded with
    ``aug_seed``, so the augmentation depends on nothing else (worker process, earlier items).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Transform | None = None,
        *,
        skip_unreadable: bool = False,
        with_masks: bool = False,
        progress: bool = False,
        class_aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.ann_file: Path | None = Path(ann_file)
        if not Path(image_dir).is_dir():
            raise DataError(f"image folder not found: {image_dir}")
        data = _load_coco_json(self.ann_file)
        self._build(data, image_dir, transforms, skip_unreadable,
                    source=str(self.ann_file), label=f"annotation file {self.ann_file}",
                    with_masks=with_masks, progress=progress, class_aliases=class_aliases)

    @classmethod
    def from_dict(
        cls,
        coco_dict: dict,
        image_root: str | os.PathLike,
        transforms: Transform | None = None,
        *,
        skip_unreadable: bool = False,
        source: str = "<in-memory>",
        with_masks: bool = False,
        progress: bool = False,
        class_aliases: Mapping[str, str] | None = None,
    ) -> "CocoDetection":
        """Build the data set from an in-memory COCO dict instead of a json file.

        Behaves exactly like the file constructor (same checks, repairs, report and ``coco``
        ground truth). Used by the VOC and YOLO readers (:mod:`icdistill.data.voc`,
        :mod:`icdistill.data.yolo`), which convert their formats to a COCO dict.

        Args:
            coco_dict: ``{"images": [{"id", "file_name", "width", "height"}], "annotations":
                [{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "iscrowd"?, ...}],
                "categories": [{"id", "name"}]}``. It is deep-copied, never modified.
            image_root: folder the images' ``file_name`` are relative to (an absolute
                ``file_name`` is used as is).
            transforms, skip_unreadable, with_masks: as for the file constructor.
            source: names the data in error and warning messages (e.g. the folder it was read
                from) in place of the annotation file.

        The returned data set's ``ann_file`` is ``None``; ``source`` is kept in ``source``.
        """
        self = cls.__new__(cls)
        self.ann_file = None
        if not Path(image_root).is_dir():
            raise DataError(f"{source}: image folder not found: {image_root}")
        data = _check_coco_dict(copy.deepcopy(coco_dict), str(source))
        self._build(data, image_root, transforms, skip_unreadable,
                    source=str(source), label=str(source), with_masks=with_masks,
                    progress=progress, class_aliases=class_aliases)
        return self

    def _build(
        self,
        data: dict,
        image_dir: str | os.PathLike,
        transforms: Transform | None,
        skip_unreadable: bool,
        *,
        source: str,
        label: str,
        with_masks: bool = False,
        progress: bool = False,
        class_aliases: Mapping[str, str] | None = None,
    ) -> None:
        """Shared construction from a structurally checked COCO dict (taken over, mutated)."""
        self.with_masks = bool(with_masks)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.skip_unreadable = bool(skip_unreadable)
        self.source = source

        merged = apply_class_aliases(data, class_aliases or {}, label)
        similar = similar_class_names(data)
        grouping = _drop_grouping_category(data)
        self._index_categories(data["categories"], label)
        self._images, by_id = _image_records(data["images"], label, self.with_masks, self.image_dir)
        num_annotations = len(data["annotations"])
        counts, files = self._attach_annotations(data["annotations"], by_id, label)
        if self.skip_unreadable:
            self._drop_unreadable(counts, files, progress)

        self.image_ids: list[int] = [rec["id"] for rec in self._images]
        self.report: dict[str, Any] = {
            "num_images": len(self._images),
            "num_annotations": num_annotations,
            "kept_annotations": int(sum(len(r["labels"]) for r in self._images)),
            "counts": counts,
            "files": {p: sorted(v) for p, v in files.items()},
        }
        if merged:
            self.report["merged_classes"] = merged
        if similar:
            self.report["similar_class_names"] = similar
            log.warning("%s: %s", self.source, describe_similar(similar))
        if grouping:
            self.report["grouping_category"] = grouping
            log.info("%s: left out category %r: it groups all the others and has no box",
                     self.source, grouping)
        if any(n for p, n in counts.items() if p != "crowd"):  # crowd boxes are normal in COCO
            log.warning("%s: %s", self.source, self.report_summary())

        if self.with_masks:
            _fill_missing_segmentations(data["annotations"])
        self.coco = _coco_index(data, label)

    def _index_categories(self, categories: list, label: str) -> None:
        """Categories sorted by COCO id -> contiguous ids 0..C-1 (``class_names`` and both maps)."""
        try:
            cats = sorted(categories, key=lambda c: int(c["id"]))
            self.contiguous_to_cat_id: list[int] = [int(c["id"]) for c in cats]
            self.class_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:
            raise DataError(f"{label}: malformed 'categories' entry "
                            f"({e!r}); each needs an integer 'id' and a 'name'") from e
        if len(set(self.contiguous_to_cat_id)) != len(self.contiguous_to_cat_id):
            raise DataError(f"{label}: duplicate category ids")
        self.cat_id_to_contiguous: dict[int, int] = {
            c: i for i, c in enumerate(self.contiguous_to_cat_id)}

    def _attach_annotations(
        self, annotations: list, by_id: dict[int, int], label: str
    ) -> tuple[dict[str, int], dict[str, set[str]]]:
        """Check, repair or drop each annotation, attaching the kept ones to their image record
        (then turned into ``boxes`` float32 ndarray[N, 4] xyxy and ``labels`` int64 ndarray[N]).

        Annotations without an integer ``image_id`` / ``category_id`` or a well-formed box are
        also left out of ``annotations`` (in place), the ground truth: pycocotools cannot index
        them and no evaluator could score them.

        Returns ``(counts, files)``: per problem, how many annotations and which file names.
        """
        counts = {p: 0 for p in _PROBLEMS}
        files: dict[str, set[str]] = {p: set() for p in _PROBLEMS}
        ground_truth = []
        for n, ann in enumerate(annotations):
            problem, name = self._attach_annotation(n, ann, by_id, label)
            if problem is not None:
                counts[problem] += 1
                files[problem].add(name)
            if (_as_box(ann.get("bbox")) and _as_int(ann.get("image_id")) is not None
                    and _as_int(ann.get("category_id")) is not None):
                ground_truth.append(ann)
        annotations[:] = ground_truth
        for rec in self._images:
            rec["boxes"] = np.asarray(rec["boxes"], dtype=np.float32).reshape(-1, 4)
            rec["labels"] = np.asarray(rec["labels"], dtype=np.int64).reshape(-1)
        return counts, files

    def _attach_annotation(
        self, n: int, ann: Any, by_id: dict[int, int], label: str
    ) -> tuple[str | None, str]:
        """Annotation #n: fill in missing ``id`` / ``iscrowd`` / ``area`` (in place), keep its
        clipped box (and checked segmentation) on its image record unless it is dropped.

        Returns ``(problem, name)``: the problem counted for it (``None`` when kept unrepaired;
        ``repaired_boxes`` is kept too) and the file name (or ``image_id=...``) reported.
        """
        if not isinstance(ann, dict):
            raise DataError(f"{label}: annotation #{n} is not an object")
        ann.setdefault("id", n + 1)
        ann.setdefault("iscrowd", 0)
        pos = by_id.get(_as_int(ann.get("image_id")))
        if pos is None:
            return "unknown_image", f"image_id={ann.get('image_id')}"
        rec = self._images[pos]
        name = rec["file_name"]
        box = _as_box(ann.get("bbox"))
        if "area" not in ann:
            ann["area"] = float(box[2] * box[3]) if box is not None else 0.0
        cat = self.cat_id_to_contiguous.get(_as_int(ann.get("category_id")))
        if cat is None:
            return "unknown_category", name
        if ann.get("iscrowd", 0):
            return "crowd", name
        clipped = _clip_box(box, rec["width"], rec["height"])
        if clipped is None:
            return "degenerate_boxes", name
        xyxy, repaired = clipped
        if self.with_masks:
            try:
                seg = _check_segmentation(ann.get("segmentation"), rec["height"], rec["width"])
            except ValueError as e:
                raise DataError(f"{label}: annotation id {ann.get('id')} of image {name} "
                                f"has a malformed 'segmentation': {e}") from e
            rec["segs"].append(seg)
        rec["boxes"].append(xyxy)
        rec["labels"].append(cat)
        return ("repaired_boxes" if repaired else None), name

    def _undecodable(self, progress: bool) -> dict[str, str]:
        """``{file name: why}`` of the images that do not decode in full to their size
        (:func:`~icdistill.data.image_check.find_undecodable`: threaded, cached per file)."""
        return find_undecodable(self.image_dir, [(r["file_name"], r["width"], r["height"])
                                                 for r in self._images],
                                desc=f"decoding images of {self.source}", progress=progress)

    def _drop_unreadable(self, counts: dict[str, int], files: dict[str, set[str]],
                         progress: bool) -> None:
        """Leave out the images that do not decode, counting them as ``unreadable_images``."""
        bad = self._undecodable(progress)
        for name in bad:
            counts["unreadable_images"] += 1
            files["unreadable_images"].add(name)
        self._images = [rec for rec in self._images if rec["file_name"] not in bad]

    # ------------------------------------------------------------------------------------------

    def check_images(self, *, progress: bool = False) -> None:
        """Decode every image in full (a truncated JPEG passes a header check but not this);
        raise DataError naming the missing, undecodable or wrongly sized files.

        With ``skip_unreadable`` such images were already dropped (and counted) at load time, so
        this passes. Decoded files are remembered (:mod:`icdistill.data.image_check`), so a
        second run does not decode them again.
        """
        bad = self._undecodable(progress)
        if bad:
            shown = "; ".join(f"{self.image_dir / name}: {why}"
                              for name, why in list(bad.items())[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise DataError(
                f"{len(bad)} image(s) of {self.source} are missing or unreadable: {shown}{more}; "
                "fix them or set data.skip_unreadable: true to skip and count them"
            )

    def _count_unreadable(self, file_name: str) -> None:
        """Count an image that failed when loaded (in this process's :attr:`report`)."""
        names = self.report["files"].setdefault("unreadable_images", [])
        if file_name not in names:
            names.append(file_name)
            names.sort()
            self.report["counts"]["unreadable_images"] = len(names)

    @property
    def num_classes(self) -> int:
        """Number of classes C (contiguous ids 0..C-1)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._images)

    def drop_images_without_annotations(self) -> int:
        """Leave out images with no (kept) box, as detectron2's FILTER_EMPTY_ANNOTATIONS does for
        training sets; returns how many were dropped and records it in :attr:`report`."""
        kept = [rec for rec in self._images if len(rec["labels"])]
        dropped = len(self._images) - len(kept)
        self._images = kept
        self.image_ids = [rec["id"] for rec in kept]
        self.report["num_images"] = len(kept)
        self.report["counts"]["empty_images_dropped"] = dropped
        return dropped

    def num_segmentations(self) -> int:
        """How many kept annotations carry a real segmentation (not a box-filled one); 0 when
        the data set was built without ``with_masks``."""
        if not self.with_masks:
            return 0
        return sum(seg is not None for rec in self._images for seg in rec["segs"])

    def report_summary(self) -> str:
        """One line naming each problem found in the annotations, with its count."""
        parts = []
        for p, n in self.report["counts"].items():
            if n:
                names = self.report["files"][p]
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                parts.append(f"{n} {p.replace('_', ' ')} ({shown})")
        return "; ".join(parts) if parts else "no problems"

    def add_reader_report(self, info: dict[str, Any], skipped: dict[str, list[str]]) -> None:
        """Add what a folder reader found before the COCO dict to :attr:`report`: ``info``
        under ``"reader"`` (e.g. ``layout``, ``split``: how the split was made) and each
        ``skipped`` reason (e.g. ``images_without_xml``) as a problem with its count and files."""
        self.report["reader"] = dict(info)
        for problem, names in skipped.items():
            self.report["counts"][problem] = len(names)
            self.report["files"][problem] = sorted(names)

    def annotation_records(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Per image, without decoding it: ``(width, height, boxes, labels)``.

        ``boxes`` is float32 ndarray[N, 4] xyxy in pixels of the image on disk (after the
        repairs described above), ``labels`` int64 ndarray[N] contiguous class ids.
        """
        for rec in self._images:
            yield rec["width"], rec["height"], rec["boxes"].copy(), rec["labels"].copy()

    def load_image(self, index: int) -> Tensor:
        """uint8 Tensor[3, H, W] RGB of item ``index`` as stored on disk.

        Raises:
            DataError: the file is missing, unreadable or does not match the json's size.
        """
        rec = self._images[index]
        path = self.image_dir / rec["file_name"]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                arr = np.array(im, dtype=np.uint8)
        except FileNotFoundError as e:
            raise DataError(f"image file not found: {path}") from e
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {path}: {e}") from e
        if arr.shape[0] != rec["height"] or arr.shape[1] != rec["width"]:
            raise DataError(
                f"image {path} is {arr.shape[1]}x{arr.shape[0]} (w x h) but {self.source} says "
                f"{rec['width']}x{rec['height']}; fix the annotations' width/height")
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def load_masks(self, index: int) -> np.ndarray:
        """Instance masks of item ``index`` on the image as stored on disk.

        Returns:
            uint8 ndarray[N, H, W] (0/1), mask i belonging to box i of
            :meth:`annotation_records` (the kept annotations, in json order).

        Raises:
            DataError: the data set was built without ``with_masks``.
        """
        if not self.with_masks:
            raise DataError(f"{self.source}: instance masks were not loaded; build the data "
                            f"set with with_masks=True")
        rec = self._images[index]
        return _decode_masks(rec["segs"], rec["boxes"], rec["height"], rec["width"])

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        aug_seed: int | None = None
        if isinstance(index, tuple):
            index, aug_seed = int(index[0]), int(index[1])
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        image = None
        for attempt in range(len(self) if self.skip_unreadable else 1):
            try:
                image = self.load_image(index)
                break
            except DataError as e:
                if not self.skip_unreadable or attempt == len(self) - 1:
                    raise
                log.warning("%s; using the next image instead", e)
                self._count_unreadable(self._images[index]["file_name"])
                index = (index + 1) % len(self)
        assert image is not None
        rec = self._images[index]
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(rec["boxes"].copy()),
            "labels": torch.from_numpy(rec["labels"].copy()),
            "image_id": rec["id"],
            "orig_size": (rec["height"], rec["width"]),
        }
        if self.with_masks:
            target["masks"] = torch.from_numpy(self.load_masks(index))
        if self.transforms is not None:
            if aug_seed is None:
                image, target = self.transforms(image, target)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(aug_seed)
                    image, target = self.transforms(image, target)
        if not torch.is_floating_point(image):
            image = image.float() / 255.0
        image = image.as_subclass(Tensor) if type(image) is not Tensor else image
        target["boxes"] = target["boxes"].as_subclass(Tensor).float().reshape(-1, 4)
        target["labels"] = target["labels"].as_subclass(Tensor).long().reshape(-1)
        if "masks" in target:
            target["masks"] = target["masks"].as_subclass(Tensor).to(torch.uint8).reshape(
                -1, int(image.shape[-2]), int(image.shape[-1]))
        return image, target


def _drop_grouping_category(data: dict) -> str | None:
    """Leave out the one category that only groups the others (this project's repair, not
    COCO's): Roboflow's COCO export adds a category named after the data set, without any box,
    that is the ``supercategory`` of every other category; kept, it would be a class that is
    never seen. Returns its name (``data["categories"]`` modified), or ``None``."""
    cats = data["categories"]
    if len(cats) < 2 or not all(isinstance(c, dict) for c in cats):
        return None
    used = {_as_int(a.get("category_id")) for a in data["annotations"] if isinstance(a, dict)}
    found = [c for c in cats
             if isinstance(c.get("name"), str) and _as_int(c.get("id")) not in used
             and all(o.get("supercategory") == c["name"] for o in cats if o is not c)]
    if len(found) != 1:
        return None
    data["categories"] = [c for c in cats if c is not found[0]]
    return found[0]["name"]


def _as_int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        return None


def _image_records(
    images: list, label: str, with_masks: bool, image_dir: Path
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Checked image records (``id``, ``file_name``, ``width``, ``height`` and empty ``boxes`` /
    ``labels``, plus ``segs`` with masks) in json order, and the position of each image id."""
    records: list[dict[str, Any]] = []
    by_id: dict[int, int] = {}
    for img in images:
        rec = _image_record(img, label, image_dir)
        img.update(file_name=rec["file_name"], width=rec["width"], height=rec["height"])  # for the GT
        if rec["width"] <= 0 or rec["height"] <= 0:
            raise DataError(f"{label}: image {rec['file_name']} has "
                            f"non-positive size {rec['width']}x{rec['height']}")
        if rec["id"] in by_id:
            raise DataError(f"{label}: duplicate image id {rec['id']}")
        by_id[rec["id"]] = len(records)
        rec["boxes"], rec["labels"] = [], []
        if with_masks:
            rec["segs"] = []
        records.append(rec)
    return records, by_id


def _image_record(img: Any, label: str, image_dir: Path) -> dict[str, Any]:
    """``{"id", "file_name", "width", "height"}`` of one ``images`` entry.

    What annotation tools write is accepted: ``file_name`` with subfolders (relative to the
    image folder) or Windows separators (``a\\b.jpg`` read as ``a/b.jpg`` when only that
    exists); ``width`` / ``height`` missing or null are read from the image header.
    """
    try:
        if not isinstance(img, dict):
            raise TypeError(f"expected an object, got {type(img).__name__}")
        file_name = img["file_name"]
        if not isinstance(file_name, str) or not file_name:
            raise TypeError(f"'file_name' must be a non-empty string, got {file_name!r}")
        if "\\" in file_name and not os.path.exists(image_dir / file_name):
            file_name = file_name.replace("\\", "/")
        width, height = img.get("width"), img.get("height")
        if width is None or height is None:
            width, height = _header_size(image_dir / file_name, label)
        return {"id": int(img["id"]), "file_name": file_name,
                "width": int(width), "height": int(height)}
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{label}: malformed 'images' entry "
                        f"{str(img)[:200]} ({e!r}); each needs 'id', 'file_name', "
                        f"'width' and 'height'") from e


def _header_size(path: Path, label: str) -> tuple[int, int]:
    """``(width, height)`` from an image header, for an entry that does not give them."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{label}: image {path} has no width/height in the annotations and "
                        f"its header cannot be read: {e}") from e


def _clip_box(
    box: tuple[float, float, float, float] | None, W: int, H: int
) -> tuple[tuple[float, float, float, float], bool] | None:
    """COCO [x, y, w, h] clipped to a W x H image as xyxy pixels, and whether clipping changed
    it; ``None`` for a missing box or one with zero width or height (before or after clipping)."""
    if box is None or box[2] <= 0 or box[3] <= 0:
        return None
    x0, y0 = box[0], box[1]
    x1, y1 = x0 + box[2], y0 + box[3]
    cx0, cy0 = min(max(x0, 0.0), W), min(max(y0, 0.0), H)
    cx1, cy1 = min(max(x1, 0.0), W), min(max(y1, 0.0), H)
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        return None
    return (cx0, cy0, cx1, cy1), (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)


def _coco_index(data: dict, label: str) -> Any:
    """The indexed ``pycocotools.coco.COCO`` ground truth over ``data`` (taken over)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as e:
            raise DataError(f"{label}: pycocotools cannot index it "
                            f"({e!r})") from e
    return coco


def _as_box(v: Any) -> tuple[float, float, float, float] | None:
    """COCO [x, y, w, h] as floats, or None when malformed or not finite."""
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        return None
    try:
        box = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(x) for x in box):
        return None
    return box  # type: ignore[return-value]


def _check_segmentation(seg: Any, h: int, w: int) -> list[list[float]] | dict | None:
    """Normalise a COCO ``segmentation`` of an image of ``h`` x ``w`` pixels.

    Returns:
        A list of polygons (each a flat list of at least 6 floats; parts of fewer than 3
        points are left out), an RLE dict (``size`` checked against ``(h, w)``), or ``None``
        when there is no usable segmentation (missing, ``None``, ``[]``, or only parts of fewer
        than 3 points).

    Raises:
        ValueError: saying what is wrong.
    """
    if seg is None or (isinstance(seg, (list, tuple)) and len(seg) == 0):
        return None
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise ValueError("an RLE needs 'counts' and 'size'")
        size = seg["size"]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or [_as_int(v) for v in size] != [h, w]):
            raise ValueError(f"RLE size {size} differs from the image size [{h}, {w}] (h, w)")
        counts = seg["counts"]
        if isinstance(counts, (str, bytes)):
            # pycocotools' C decoder trusts the string: a malformed one reads or writes past
            # its buffers, so the counts are checked here first.
            total = sum(_rle_string_counts(counts))
            if total != h * w:
                raise ValueError(f"compressed RLE counts sum to {total}, not h*w = {h * w}")
            return {"size": [h, w], "counts": counts}
        if isinstance(counts, (list, tuple)) and all(
                isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
            if sum(int(c) for c in counts) != h * w:
                raise ValueError(f"uncompressed RLE counts sum to {sum(int(c) for c in counts)}, "
                                 f"not h*w = {h * w}")
            return {"size": [h, w], "counts": [int(c) for c in counts]}
        raise ValueError("RLE 'counts' must be a string or a list of non-negative ints")
    if isinstance(seg, (list, tuple)):
        polys: list[list[float]] = []
        for k, part in enumerate(seg):
            if not isinstance(part, (list, tuple)):
                raise ValueError(f"polygon #{k} is not a list of coordinates")
            try:
                coords = [float(v) for v in part]
            except (TypeError, ValueError) as e:
                raise ValueError(f"polygon #{k} has a non-numeric coordinate") from e
            if len(coords) % 2 or not all(math.isfinite(v) for v in coords):
                raise ValueError(f"polygon #{k} needs an even number of finite coordinates, "
                                 f"got {len(coords)}")
            # pycocotools rasterises polygons with C ints: far-off points overflow them
            reach = 10 * max(h, w) + 10_000
            if any(abs(v) > reach for v in coords):
                raise ValueError(f"polygon #{k} has a point more than {reach} px outside the "
                                 f"image")
            if len(coords) >= 6:
                polys.append(coords)
        return polys or None
    raise ValueError(f"expected a list of polygons or an RLE dict, got {type(seg).__name__}")


def _rle_string_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``: 5-bit
    groups offset by 48, bit 0x20 = more groups, bit 0x10 of the last = negative; from the
    third run on, deltas to the run two before).

    Raises:
        ValueError: a character outside ``'0'..'o'``, a number cut off, or a negative run.
    """
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError as e:
            raise ValueError("compressed RLE counts are not ASCII") from e
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("compressed RLE counts end inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE counts hold {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError("compressed RLE counts hold a negative run")
        runs.append(x)
    return runs


def _decode_masks(
    segs: list[list[list[float]] | dict | None], boxes: np.ndarray, h: int, w: int
) -> np.ndarray:
    """uint8 ndarray[N, h, w] (0/1) from checked segmentations (see :func:`_check_segmentation`);
    a ``None`` segmentation is filled from its xyxy box ``boxes[i]`` (every pixel the box
    touches)."""
    from pycocotools import mask as mask_utils

    out = np.zeros((len(segs), h, w), dtype=np.uint8)
    rles, rows = [], []
    for i, seg in enumerate(segs):
        if seg is None:
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            c0, r0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
            c1, r1 = min(int(math.ceil(x1)), w), min(int(math.ceil(y1)), h)
            out[i, r0:r1, c0:c1] = 1
            continue
        if isinstance(seg, list):
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
        elif isinstance(seg["counts"], list):
            rles.append(mask_utils.frPyObjects(seg, h, w))
        else:
            rles.append(seg)
        rows.append(i)
    if rles:
        with warnings.catch_warnings():
            # pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; harmless
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=".*copy keyword.*")
            decoded = mask_utils.decode(rles)  # uint8 [h, w, len(rles)], Fortran order
        out[rows] = np.moveaxis(decoded, -1, 0)
    return out


def _fill_missing_segmentations(annotations: list[dict]) -> None:
    """Give every annotation without a segmentation its box as a polygon, in place, so that
    mask AP can be scored on data sets that only have boxes (the targets' masks are box-filled
    the same way)."""
    for ann in annotations:
        if ann.get("segmentation"):
            continue
        box = _as_box(ann.get("bbox"))
        if box is None:
            continue
        x, y, w, h = box
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
