"""Where a dataset folder keeps its images and annotations, as annotation tools write them.

Recognised for VOC XML folders (``data.format: voc_folder``), in each folder (names matched
case-insensitively, first match wins):

* ``images/`` + ``annotations/`` (labelImg's default), ``JPEGImages/`` + ``Annotations/``
  (VOC), and the other pairs of :data:`IMAGE_DIR_NAMES` x :data:`ANN_DIR_NAMES`;
* images and XML files mixed in one folder (several export services);
* folders named explicitly (``data.voc_folder.image_dir`` / ``data.voc_folder.ann_dir``);
* whatever their names, the one folder holding XML files and the one holding images (e.g.
  ``imgs_raw/`` + ``annots/``); the layout then says it found them by what they hold.

One folder per split (``train/`` beside ``test/``, ``valid/`` or ``val/``), each holding any of
the layouts above, gives the split (:func:`find_split_folders`).

When nothing is recognised the error says what the folder holds (:func:`describe_folder`: a
few names, file counts by extension, subfolders) and which config keys to set.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import DataError

__all__ = [
    "ANN_DIR_NAMES",
    "IMAGE_DIR_NAMES",
    "IMAGE_EXTS",
    "FolderLayout",
    "SplitFolders",
    "describe_folder",
    "find_split_folders",
    "find_xml_layout",
    "image_files",
    "xml_files",
]

#: Image file extensions read by every folder reader (lower case; matched case-insensitively).
IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Image folder names tried, in order (case-insensitive).
IMAGE_DIR_NAMES: tuple[str, ...] = ("JPEGImages", "images", "imgs", "img", "pictures")
#: Annotation folder names tried, in order (case-insensitive); one counts only if it holds XMLs.
ANN_DIR_NAMES: tuple[str, ...] = ("Annotations", "annotations", "annotation", "xml", "xmls", "labels")
#: Split folder names: training first, then the test-like ones in the order they are preferred.
TRAIN_SPLIT_NAMES: tuple[str, ...] = ("train", "training")
TEST_SPLIT_NAMES: tuple[str, ...] = ("test", "testing", "valid", "val", "validation")

_KEYS_HINT = ("set data.voc_folder.image_dir and data.voc_folder.ann_dir (relative to "
              "data.voc_folder.root) to name the image and XML folders, or data.format to the "
              "format the folder is in (coco, yolo, voc)")


@dataclass(frozen=True)
class FolderLayout:
    """The image folder and the XML folder of one (split) folder, and which layout it is."""

    image_dir: Path
    ann_dir: Path
    kind: str

    def describe(self, root: Path) -> str:
        """``images/ + annotations/ (kind)`` with paths relative to ``root``."""
        if self.image_dir == self.ann_dir:
            return f"{_rel(self.image_dir, root)} ({self.kind})"
        return f"{_rel(self.image_dir, root)} + {_rel(self.ann_dir, root)} ({self.kind})"


@dataclass(frozen=True)
class SplitFolders:
    """Split folders of a dataset root: those read for training / testing, and those left out."""

    train: tuple[Path, ...]
    test: tuple[Path, ...]
    unused: tuple[Path, ...] = field(default=())

    def describe(self, root: Path) -> str:
        """``folders: train <- train/, test <- test/ (valid/ not used)``."""
        def names(ps: Sequence[Path]) -> str:
            return "+".join(f"{_rel(p, root)}" for p in ps)

        text = f"split folders: train <- {names(self.train)}, test <- {names(self.test)}"
        return text + (f" ({names(self.unused)} not used)" if self.unused else "")


def _rel(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
    return "./" if rel == "." else rel + "/"


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)
    except OSError:
        return []


def _named_subdir(folder: Path, names: Sequence[str]) -> list[Path]:
    """Subfolders of ``folder`` whose name is one of ``names`` (case-insensitive), in the order
    of ``names``."""
    by_lower: dict[str, Path] = {}
    for d in _subdirs(folder):
        by_lower.setdefault(d.name.lower(), d)
    return [by_lower[n.lower()] for n in names if n.lower() in by_lower]


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by extension, case-insensitive; hidden ones left
    out), sorted by name."""
    return _files(folder, IMAGE_EXTS)


def xml_files(folder: Path) -> list[Path]:
    """``*.xml`` files directly in ``folder`` (case-insensitive; hidden ones left out: macOS
    writes ``._name.xml`` resource files beside each file of an archive), sorted by name."""
    return _files(folder, (".xml",))


def _files(folder: Path, exts: Sequence[str]) -> list[Path]:
    try:
        return sorted((p for p in folder.iterdir() if p.suffix.lower() in exts
                       and not p.name.startswith(".") and p.is_file()), key=lambda p: p.name)
    except OSError:
        return []


def _has_xml(folder: Path) -> bool:
    return bool(xml_files(folder))


def _given_dir(base: Path, given: str | os.PathLike, key: str) -> Path:
    p = Path(given)
    p = p if p.is_absolute() else base / p
    if not p.is_dir():
        raise DataError(f"{key}: folder not found: {p}; {base} holds {describe_folder(base)}")
    return p


def find_xml_layout(
    folder: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    ann_dir: str | os.PathLike | None = None,
) -> FolderLayout:
    """The image and XML folders of ``folder``.

    ``ann_dir`` / ``image_dir`` (relative to ``folder`` or absolute) are used when given;
    otherwise the XML folder is the first of :data:`ANN_DIR_NAMES` holding ``*.xml``, else
    ``folder`` itself when it holds some, else the one subfolder holding ``*.xml`` whatever its
    name; the image folder the first of :data:`IMAGE_DIR_NAMES` holding images, else the XML
    folder when it holds images too (mixed), else ``folder`` when it holds images, else the one
    other subfolder holding images whatever its name. A folder found by what it holds rather
    than by its name is said so in the layout's ``kind`` (the data report's ``layout``).

    Raises:
        DataError: a named folder is missing, or no XML / no image is found; the message
            lists what ``folder`` holds and which keys to set.
    """
    folder = Path(folder)
    xml_dir, xml_found_by = _xml_dir(folder, ann_dir)
    if image_dir is not None:
        return FolderLayout(_given_dir(folder, image_dir, "data.voc_folder.image_dir"), xml_dir, "as configured")
    for d in _named_subdir(folder, IMAGE_DIR_NAMES):
        if image_files(d):
            return FolderLayout(d, xml_dir, xml_found_by or "separate image and XML folders")
    for d, kind in ((xml_dir, "images and XMLs mixed"), (folder, "images beside the XML folder")):
        if image_files(d):
            return FolderLayout(d, xml_dir, xml_found_by or kind)
    holders = [d for d in _subdirs(folder) if d != xml_dir and image_files(d)]
    if len(holders) == 1:
        found_by = ("found by content: the only folders holding images and XML files"
                    if xml_found_by else "found by content: the only folder holding images")
        return FolderLayout(holders[0], xml_dir, found_by)
    raise DataError(f"VOC XMLs found in {xml_dir} but no image ({', '.join(IMAGE_EXTS)}) in "
                    f"{folder} or its folders {', '.join(IMAGE_DIR_NAMES)}: {folder} holds "
                    f"{describe_folder(folder)}; {_KEYS_HINT}")


def _xml_dir(folder: Path, ann_dir: str | os.PathLike | None) -> tuple[Path, str | None]:
    """The XML folder of ``folder`` (see :func:`find_xml_layout`) and, when it was found by
    what it holds rather than by its name, the words saying so (else ``None``)."""
    if ann_dir is not None:
        given = _given_dir(folder, ann_dir, "data.voc_folder.ann_dir")
        if not _has_xml(given):
            raise DataError(f"no VOC annotation (*.xml) found in {given} (data.voc_folder.ann_dir): it "
                            f"holds {describe_folder(given)}; {_KEYS_HINT}")
        return given, None
    named = [d for d in _named_subdir(folder, ANN_DIR_NAMES) if _has_xml(d)]
    if named:
        return named[0], None
    if _has_xml(folder):
        return folder, None
    holders = [d for d in _subdirs(folder) if _has_xml(d)]
    if len(holders) == 1:
        return holders[0], "found by content: the only folder holding XML files"
    several = (f"several folders hold XML files ({', '.join(d.name + '/' for d in holders)}): "
               f"set data.voc_folder.ann_dir to the one to read; " if holders else "")
    raise DataError(f"no VOC annotation (*.xml) found in {folder}: it holds "
                    f"{describe_folder(folder)}; {several}looked for {_layout_names()}; "
                    f"{_format_hint(folder)}{_KEYS_HINT}")


def _format_hint(folder: Path) -> str:
    """``this looks like ...; `` when ``folder`` holds another format's files."""
    try:
        names = {p.name.lower() for p in folder.iterdir()}
    except OSError:
        return ""
    if names & {"data.yaml", "data.yml", "classes.txt", "obj.names"} or "labels" in names:
        return "it looks like a YOLO folder (data.format: yolo); "
    if any(n.endswith(".json") for n in names):
        return "it holds json files: a COCO export? (data.format: coco); "
    return ""


def _layout_names() -> str:
    return ("images/ + annotations/, JPEGImages/ + Annotations/, images and XMLs in one folder, "
            "or split folders train/ + test/ (or valid/, val/) holding one of these")


def find_split_folders(
    root: str | os.PathLike,
    train: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
) -> SplitFolders | None:
    """The split folders of ``root``, or ``None`` when it has none.

    ``train`` / ``test``: folder names to read (joined when several), as ``data.voc_folder.train_splits``
    / ``data.voc_folder.test_splits`` give them; ``None`` picks ``train`` (or ``training``) and the first
    of ``test``, ``testing``, ``valid``, ``val``, ``validation`` found. Split folders are used
    only when a training and a test folder both exist.

    Raises:
        DataError: a name given in ``train`` / ``test`` is not a folder of ``root`` while root
            does have split folders (the ones found are listed).
    """
    root = Path(root)
    train_found = _named_subdir(root, TRAIN_SPLIT_NAMES)
    test_found = _named_subdir(root, TEST_SPLIT_NAMES)
    if train is None and test is None and not (train_found and test_found):
        return None
    known = {d.name.lower(): d for d in _subdirs(root)}
    chosen: dict[str, list[Path]] = {}
    for role, names, found in (("train", train, train_found), ("test", test, test_found)):
        if names is None:
            if not found:
                return None
            chosen[role] = [found[0]]
            continue
        missing = [n for n in names if n.lower() not in known]
        if missing:
            raise DataError(f"data.voc_folder.{role}_splits: no folder "
                            f"{', '.join(map(repr, missing))} in "
                            f"{root}; it has the folders "
                            f"{', '.join(sorted(known)) or '(none)'}")
        chosen[role] = [known[n.lower()] for n in names]
    used = set(chosen["train"]) | set(chosen["test"])
    unused = tuple(d for d in train_found + test_found if d not in used)
    return SplitFolders(tuple(chosen["train"]), tuple(chosen["test"]), unused)


def describe_folder(folder: str | os.PathLike, max_names: int = 5) -> str:
    """What ``folder`` holds, for error messages: a few file names, file counts by extension
    and the subfolders, e.g. ``3 files (2 .jpg, 1 .txt: a.jpg, b.jpg, notes.txt); folders:
    labels/, raw/``."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as e:
        return f"nothing readable ({e.strerror or e})"
    files = [p for p in entries if p.is_file()]
    dirs = [p for p in entries if p.is_dir()]
    if not files and not dirs:
        return "nothing (empty folder)"
    parts = []
    if files:
        by_ext = Counter(p.suffix.lower() or "(no extension)" for p in files)
        counts = ", ".join(f"{n} {ext}" for ext, n in by_ext.most_common())
        shown = ", ".join(p.name for p in files[:max_names]) + (", ..." if len(files) > max_names else "")
        parts.append(f"{len(files)} file{'s' if len(files) > 1 else ''} ({counts}: {shown})")
    else:
        parts.append("no files")
    if dirs:
        shown = ", ".join(d.name + "/" for d in dirs[:2 * max_names])
        parts.append(f"folders: {shown}" + (", ..." if len(dirs) > 2 * max_names else ""))
    return "; ".join(parts)
