"""Plain folders of images and VOC XML files (no ``ImageSets``), as annotation tools write them.

The layouts recognised are those of :mod:`icdistill.data.layouts` (``images/`` +
``annotations/``, ``JPEGImages/`` + ``Annotations/``, mixed, or folders named in the config);
one folder per split (``train/`` + ``test/`` / ``valid/`` / ``val/``) gives the split, otherwise
a seeded random one is drawn. The COCO dict is made as in :mod:`icdistill.data.voc` (VOC's
1-based ``bndbox`` to COCO ``[x, y, w, h]`` 0-based pixels, difficult objects as crowd)::

    splits = read_voc_folder("/data/cells")
    train = CocoDetection.from_dict(splits["train"].coco, splits["train"].image_root, tf)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import DataError
from .layouts import (FolderLayout, SplitFolders, find_split_folders, find_xml_layout, image_files,
                      xml_files)
from .voc import VOCRecord, image_file_of, parse_voc_xml, records_to_coco, resolve_classes

__all__ = ["VOCFolderSplit", "load_voc_folder", "read_voc_folder"]

#: ``(voc id, file name relative to the image root, record)`` of one XML.
_Loaded = tuple[str, str, VOCRecord]


@dataclass
class VOCFolderSplit:
    """One split of a VOC folder as read.

    ``coco``: the COCO dict; ``image_root``: the folder its ``file_name`` are relative to;
    ``layout``: where images and XMLs were found; ``split``: how the split was made (split
    folders or the seeded draw); ``skipped``: files left out or repaired, by reason
    (``images_without_xml``: images no XML names; ``sizes_from_images``: images whose XML
    has no usable ``<size>``, read from the image header instead), relative to ``image_root``.
    """

    coco: dict
    image_root: Path
    layout: str
    split: str
    skipped: dict[str, list[str]] = field(default_factory=dict)


def load_voc_folder(
    root: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    ann_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    split: str = "all",
    test_fraction: float = 0.2,
    seed: int = 0,
    keep_difficult: bool = False,
    train_folders: Sequence[str] | None = None,
    test_folders: Sequence[str] | None = None,
) -> tuple[dict, Path]:
    """``(coco_dict, image_root)`` of one split (``"train"``, ``"test"`` or ``"all"``) of a VOC
    folder; the arguments are those of :func:`read_voc_folder`."""
    if split not in ("train", "test", "all"):
        raise DataError(f"load_voc_folder: split must be 'train', 'test' or 'all', got {split!r}")
    got = read_voc_folder(root, image_dir=image_dir, ann_dir=ann_dir, class_names=class_names,
                          test_fraction=test_fraction, seed=seed, keep_difficult=keep_difficult,
                          train_folders=train_folders, test_folders=test_folders)[split]
    return got.coco, got.image_root


def read_voc_folder(
    root: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    ann_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    keep_difficult: bool = False,
    train_folders: Sequence[str] | None = None,
    test_folders: Sequence[str] | None = None,
) -> dict[str, VOCFolderSplit]:
    """Read a plain folder of images and VOC XML files into the ``"train"``, ``"test"`` and
    ``"all"`` splits.

    Every XML is one image (an image without an XML is not loaded; it is listed in
    ``skipped["images_without_xml"]``). Its image is ``<stem>.jpg`` in the image folder, else
    the XML's ``<filename>`` there, else the image of the same stem.

    Split: when ``root`` has split folders (:func:`~icdistill.data.layouts.find_split_folders`:
    ``train/`` beside ``test/``, ``valid/`` or ``val/``, or the names ``train_folders`` /
    ``test_folders``), each is read in its own layout and they are the splits; ``file_name``
    are then relative to ``root`` and image ids run over train, then test. Otherwise the split
    is seeded: XMLs sorted by file name are permuted with ``numpy.random.default_rng(seed)``;
    the first ``round(test_fraction * N)`` (halves up) are the test split, the rest the train
    split, each in file-name order, ids being the 1-based positions in file-name order (the
    same in every split) and ``file_name`` relative to the image folder; the files noted in
    ``skipped`` are then the folder's, listed with ``train`` (and ``all``).

    Args:
        root: the folder.
        image_dir, ann_dir: image / XML folder, relative to ``root`` (or, when ``root`` has
            split folders and no such folder of its own, to each split folder) or absolute;
            default: found (:func:`~icdistill.data.layouts.find_xml_layout`).
        class_names: class order; default as in :func:`~icdistill.data.voc.load_voc`, over all
            XMLs read (whatever the split), so train and test get the same classes.
        test_fraction, seed: the seeded split (not used with split folders).
        keep_difficult: as in :func:`~icdistill.data.voc.load_voc`.
        train_folders, test_folders: split folder names (``data.voc_folder.train_splits`` /
            ``data.voc_folder.test_splits`` when set); ``None``: found.

    Raises:
        DataError: ``root`` or a named folder is missing, no layout is recognised (the message
            lists what the folder holds and the keys to set), an argument is out of range, or
            an XML is broken (file named).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"VOC folder not found: {root}")
    if not 0.0 <= float(test_fraction) <= 1.0:
        raise DataError(f"load_voc_folder: test_fraction must be in [0, 1], got {test_fraction}")
    given_at_root = any(d is not None and (root / d).is_dir() for d in (image_dir, ann_dir))
    folders = None if given_at_root else find_split_folders(root, train_folders, test_folders)
    if folders is None:
        layout = find_xml_layout(root, image_dir=image_dir, ann_dir=ann_dir)
        return _seeded_splits(root, layout, class_names, float(test_fraction), int(seed),
                              keep_difficult)
    return _folder_splits(root, folders, image_dir, ann_dir, class_names, keep_difficult)


def _scan(layout: FolderLayout, prefix: str) -> tuple[list[_Loaded], dict[str, list[str]]]:
    """Every XML of ``layout`` in file-name order as ``(voc id, prefix + image name, record)``,
    and by reason the files noted: ``images_without_xml`` (images of the image folder that no
    XML names), ``sizes_from_images`` (``prefix`` + name)."""
    xmls = xml_files(layout.ann_dir)
    loaded, used, sized = [], set(), []
    for xml in xmls:
        # Some tools write <width>0</width> or no <size>: the image header has it.
        rec = parse_voc_xml(xml, need_size=False)
        name = image_file_of(layout.image_dir, xml.stem, rec.filename)
        if rec.width <= 0 or rec.height <= 0:
            rec.width, rec.height = _header_size(xml, layout.image_dir / name)
            sized.append(prefix + name)
        used.add(name)
        loaded.append((prefix + xml.stem, prefix + name, rec))
    unannotated = [prefix + p.name for p in image_files(layout.image_dir) if p.name not in used]
    noted = {"images_without_xml": unannotated}
    if sized:
        noted["sizes_from_images"] = sized
    return loaded, noted


def _header_size(xml: Path, image: Path) -> tuple[int, int]:
    """``(width, height)`` of ``image`` from its header, for an XML without a usable size."""
    try:
        with Image.open(image) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"VOC annotation {xml}: missing or malformed image size (size/width, "
                        f"size/height), and its image {image} cannot be read for it: {e}") from e


def _seeded_splits(
    root: Path, layout: FolderLayout, class_names: Sequence[str] | None, test_fraction: float,
    seed: int, keep_difficult: bool,
) -> dict[str, VOCFolderSplit]:
    """The seeded train/test split of one folder (see :func:`read_voc_folder`)."""
    loaded, noted = _scan(layout, "")
    names = resolve_classes(class_names, sorted({o.name for _, _, r in loaded for o in r.objects}))
    n = len(loaded)
    n_test = int(math.floor(test_fraction * n + 0.5))
    order = np.random.default_rng(seed).permutation(n)
    test_idx = {int(i) for i in order[:n_test]}
    keep = {"all": list(range(n)), "test": sorted(test_idx),
            "train": [i for i in range(n) if i not in test_idx]}
    how = (f"seeded: data.voc_folder.test_fraction {test_fraction:g}, data.voc_folder.split_seed {seed} "
           f"({n_test} of {n} images for testing)")
    out = {}
    for split, idx in keep.items():
        records = [(i + 1, loaded[i][1], loaded[i][2]) for i in idx]
        extra = [{"voc_id": loaded[i][0]} for i in idx]
        out[split] = VOCFolderSplit(records_to_coco(records, names, keep_difficult, extra),
                                    layout.image_dir, layout.describe(root), how,
                                    noted if split != "test" else {})
    return out


def _folder_splits(
    root: Path, folders: SplitFolders, image_dir: str | os.PathLike | None,
    ann_dir: str | os.PathLike | None, class_names: Sequence[str] | None, keep_difficult: bool,
) -> dict[str, VOCFolderSplit]:
    """The splits given by split folders (see :func:`read_voc_folder`)."""
    per_role: dict[str, tuple[list[_Loaded], dict[str, list[str]]]] = {}
    layouts: dict[str, list[str]] = {"train": [], "test": []}
    for role, dirs in (("train", folders.train), ("test", folders.test)):
        loaded: list[_Loaded] = []
        noted: dict[str, list[str]] = {"images_without_xml": []}
        for d in dirs:
            layout = find_xml_layout(d, image_dir=image_dir, ann_dir=ann_dir)
            layouts[role].append(layout.describe(root))
            got, found = _scan(layout, _prefix(layout.image_dir, root))
            loaded += got
            for reason, names in found.items():
                noted.setdefault(reason, []).extend(names)
        per_role[role] = (loaded, noted)
    everything = per_role["train"][0] + per_role["test"][0]
    names = resolve_classes(class_names, sorted({o.name for _, _, r in everything for o in r.objects}))
    first_id = {"train": 1, "test": len(per_role["train"][0]) + 1, "all": 1}
    per_role["all"] = (everything, {k: per_role["train"][1].get(k, []) + per_role["test"][1].get(k, [])
                                    for k in {*per_role["train"][1], *per_role["test"][1]}})
    layouts["all"] = layouts["train"] + layouts["test"]
    out = {}
    for split, (loaded, noted) in per_role.items():
        records = [(first_id[split] + k, fn, rec) for k, (_, fn, rec) in enumerate(loaded)]
        extra = [{"voc_id": key} for key, _, _ in loaded]
        out[split] = VOCFolderSplit(records_to_coco(records, names, keep_difficult, extra), root,
                                    "; ".join(layouts[split]), folders.describe(root),
                                    noted)
    return out


def _prefix(image_dir: Path, root: Path) -> str:
    """What goes before an image name so that it is relative to ``root`` (or absolute)."""
    try:
        rel = image_dir.relative_to(root).as_posix()
    except ValueError:
        return image_dir.as_posix() + "/"
    return "" if rel == "." else rel + "/"
