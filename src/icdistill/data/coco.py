"""COCO-format detection data set (real COCO, or anything written in its json format).

Items are ``(image, target)``:

* ``image``: float Tensor[3, h, w] in [0, 1], RGB, after the transforms (resize, flip);
* ``target``: ``{"boxes": float32 Tensor[N, 4] xyxy in pixels of the transformed image,
  "labels": int64 Tensor[N] contiguous class ids 0..C-1, "image_id": int (the json image id),
  "orig_size": (h, w) of the image on disk}``; with ``with_masks=True`` also ``"masks": uint8
  Tensor[N, h, w]`` (0/1), one instance mask per box, in pixels of the transformed image.

Construction is done by the modules beside this one, each with one job: reading the dict
(:mod:`~icdistill.data.coco_parse`), merging and reporting class names spelled two ways
(:mod:`~icdistill.data.class_names`), checking, repairing or dropping each annotation without
reading any image (:mod:`~icdistill.data.coco_repair`: crowd regions, clipped and degenerate
boxes, unknown categories), decoding every image once when asked
(:mod:`~icdistill.data.image_check`) and the report of what was found
(:mod:`~icdistill.data.coco_report`, :attr:`CocoDetection.report`). This module serves the
items.

Instance masks (``with_masks=True``) are decoded per item from each kept annotation's
``segmentation`` (polygons, uncompressed or compressed RLE; :mod:`~icdistill.data.segmentation`);
an annotation without one gets its (clipped) box filled instead. A repaired (clipped) box keeps
its mask.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from . import coco_report
from .class_names import apply_class_aliases, similar_class_names
from .coco_parse import check_coco_dict, coco_index, image_records, index_categories, load_coco_json
from .coco_repair import attach_annotations, drop_grouping_category
from .image_check import find_undecodable
from .segmentation import decode_masks, fill_missing_segmentations

__all__ = ["CocoDetection", "Transform"]

log = logging.getLogger(__name__)

#: A transform maps ``(image uint8 Tensor[3, H, W], target)`` to ``(image, target)``; see
#: :func:`icdistill.data.transforms.build_transforms`.
Transform = Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]]


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
        data = load_coco_json(self.ann_file)
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
        data = check_coco_dict(copy.deepcopy(coco_dict), str(source))
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
        grouping = drop_grouping_category(data)
        self.contiguous_to_cat_id, self.class_names = index_categories(data["categories"], label)
        self.cat_id_to_contiguous = {c: i for i, c in enumerate(self.contiguous_to_cat_id)}
        self._images, by_id = image_records(data["images"], label, self.with_masks, self.image_dir)
        num_annotations = len(data["annotations"])
        counts, files = attach_annotations(data["annotations"], self._images, by_id,
                                           self.cat_id_to_contiguous, label,
                                           with_masks=self.with_masks)
        if self.skip_unreadable:
            self._drop_unreadable(counts, files, progress)

        self.image_ids: list[int] = [rec["id"] for rec in self._images]
        self.report: dict[str, Any] = coco_report.new_report(self._images, num_annotations,
                                                             counts, files)
        coco_report.note_classes(self.report, self.source, merged, similar, grouping)
        if any(n for p, n in counts.items() if p != "crowd"):  # crowd boxes are normal in COCO
            log.warning("%s: %s", self.source, self.report_summary())

        if self.with_masks:
            fill_missing_segmentations(data["annotations"])
        self.coco = coco_index(data, label)

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
        return coco_report.report_summary(self.report)

    def add_reader_report(self, info: dict[str, Any], skipped: dict[str, list[str]]) -> None:
        """Add what a folder reader found before the COCO dict to :attr:`report`
        (:func:`~icdistill.data.coco_report.add_reader_report`)."""
        coco_report.add_reader_report(self.report, info, skipped)

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
        return decode_masks(rec["segs"], rec["boxes"], rec["height"], rec["width"])

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
                coco_report.count_file(self.report, "unreadable_images",
                                        self._images[index]["file_name"])
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
