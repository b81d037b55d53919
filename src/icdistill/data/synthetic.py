"""A procedurally generated "shapes" detection dataset, written to disk as PNG + COCO json.

The data set exists so that every part of the toolkit (training, distillation, evaluation, the
dataset prior) can be exercised end to end in minutes on a CPU, through exactly the same code
path as a real COCO-format data set.

Design (all of it decided by ``seed``):

* Classes (COCO category ids 1..4), with deliberately different frequencies and sizes. Sizes are
  the shape's extent as a fraction of the image's short side, drawn log-uniformly:

  ======== ========== ===============================
  name     frequency  size (fraction of short side)
  ======== ========== ===============================
  circle   45 %       0.10 – 0.30  (medium)
  square   30 %       0.25 – 0.55  (large)
  triangle 15 %       0.06 – 0.14  (small)
  cross    10 %       0.05 – 0.45  (small to large)
  ======== ========== ===============================

* 1–10 objects per image (uniform), random colours kept apart from the background colour,
  random aspect jitter; triangles and crosses get a random rotation.
* Textured backgrounds: smooth noise, linear gradients or stripes, plus pixel noise.
* Occlusion: shapes are drawn in order, later ones over earlier ones. A new shape is placed only
  if every shape already placed stays at least 40 % visible (i.e. no annotated object is occluded
  by more than 60 %); otherwise another position is tried (up to 8 tries) and the object is
  dropped if none fits. Dropped objects are never drawn, so every visible shape is annotated.
* Boxes are the **visible extent**: the tight box (pixel edges, COCO xywh) of the shape's pixels
  that remain visible after all later shapes are drawn. ``area`` is the visible pixel count.
* Instance masks: each annotation's ``segmentation`` is a compressed COCO RLE (pycocotools) of
  exactly those visible pixels, so the mask families (Mask R-CNN, Cascade Mask R-CNN, CondInst)
  train on real shapes, not box-filled rectangles.
* Image size: ``image_size`` (h, w) scaled independently per image and axis by a factor drawn
  from U(1 - size_jitter, 1 + size_jitter).

Generation is deterministic: the same parameters give byte-identical PNG files and json. A
``manifest.json`` records the parameters; a later call with the same parameters and all files
present returns at once, a call with other parameters regenerates the data set.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError

__all__ = ["ShapesPaths", "SHAPE_CLASSES", "generate_shapes"]

#: (name, relative frequency, min size, max size) — sizes as fractions of the image's short side.
SHAPE_CLASSES: tuple[tuple[str, float, float, float], ...] = (
    ("circle", 0.45, 0.10, 0.30),
    ("square", 0.30, 0.25, 0.55),
    ("triangle", 0.15, 0.06, 0.14),
    ("cross", 0.10, 0.05, 0.45),
)

_GENERATOR_VERSION = 2  # 2: annotations carry an RLE ``segmentation``
_MIN_VISIBLE = 0.4  # an annotated shape keeps at least this fraction of its pixels visible
_PLACEMENT_TRIES = 8
_MIN_COLOUR_DISTANCE = 90.0


@dataclass(frozen=True)
class ShapesPaths:
    """Where a generated shapes data set lives.

    Attributes:
        root: the data set's root folder.
        train_images / test_images: folders of PNG images.
        train_json / test_json: COCO-format annotation files.
    """

    root: Path
    train_images: Path
    train_json: Path
    test_images: Path
    test_json: Path


def _paths(root: Path) -> ShapesPaths:
    return ShapesPaths(
        root=root,
        train_images=root / "train",
        train_json=root / "annotations" / "train.json",
        test_images=root / "test",
        test_json=root / "annotations" / "test.json",
    )


def generate_shapes(
    root: str | os.PathLike,
    *,
    num_train: int = 400,
    num_test: int = 100,
    image_size: tuple[int, int] = (160, 224),
    size_jitter: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> ShapesPaths:
    """Generate (or reuse) the shapes data set under ``root``.

    Layout: ``root/train/*.png``, ``root/test/*.png``, ``root/annotations/{train,test}.json``,
    ``root/manifest.json``.

    Args:
        root: output folder (created if needed).
        num_train / num_test: number of images per split (>= 1 and >= 0).
        image_size: nominal (h, w) in pixels, each at least 32.
        size_jitter: per-image, per-axis relative size jitter in [0, 0.5).
        seed: everything drawn depends only on this and the other parameters.
        progress: show a tqdm progress bar.

    Returns:
        :class:`ShapesPaths` of the generated files.

    Raises:
        DataError: bad parameters, or ``root`` cannot be written.
    """
    root = Path(root)
    h, w = (int(v) for v in image_size)
    _check_shapes_args(num_train, num_test, image_size, size_jitter)
    params = {
        "generator_version": _GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_test": int(num_test),
        "image_size": [h, w],
        "size_jitter": float(size_jitter),
        "seed": int(seed),
        "classes": [list(c) for c in SHAPE_CLASSES],
    }
    paths = _paths(root)
    manifest = root / "manifest.json"
    if _is_complete(paths, manifest, params):
        return paths
    _clear_for_regeneration(paths, manifest)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_train + num_test, desc=f"generating shapes in {root}", unit="img")
    try:
        for split_id, (n, img_dir, ann_file) in enumerate(
            ((num_train, paths.train_images, paths.train_json),
             (num_test, paths.test_images, paths.test_json))
        ):
            coco = _generate_split(n, img_dir, (h, w), size_jitter, seed, split_id, bar)
            _write_json(ann_file, coco)
        _write_json(manifest, params)
    except OSError as e:
        raise DataError(f"cannot write the shapes data set under {root}: {e}") from e
    finally:
        if bar is not None:
            bar.close()
    return paths


def _check_shapes_args(num_train: int, num_test: int, image_size: tuple[int, int], size_jitter: float) -> None:
    """DataError naming the first out-of-range argument of :func:`generate_shapes`."""
    h, w = (int(v) for v in image_size)
    if num_train < 1 or num_test < 0:
        raise DataError(f"generate_shapes: num_train must be >= 1 and num_test >= 0, got "
                        f"{num_train} and {num_test}")
    if h < 32 or w < 32:
        raise DataError(f"generate_shapes: image_size must be at least (32, 32), got {image_size}")
    if not 0.0 <= size_jitter < 0.5:
        raise DataError(f"generate_shapes: size_jitter must be in [0, 0.5), got {size_jitter}")


def _clear_for_regeneration(paths: ShapesPaths, manifest: Path) -> None:
    """Create the folders, remove the manifest and every old PNG before regenerating."""
    try:
        for folder in (paths.train_images, paths.test_images, paths.train_json.parent):
            folder.mkdir(parents=True, exist_ok=True)
        if manifest.exists():
            manifest.unlink()  # an interrupted regeneration must not look complete
        for folder in (paths.train_images, paths.test_images):
            for old in folder.glob("*.png"):
                old.unlink()
    except OSError as e:
        raise DataError(f"cannot write the shapes data set under {paths.root}: {e}") from e


def _is_complete(paths: ShapesPaths, manifest: Path, params: dict) -> bool:
    try:
        if json.loads(manifest.read_text()) != params:
            return False
    except (OSError, ValueError):
        return False
    if not (paths.train_json.is_file() and paths.test_json.is_file()):
        return False
    return (
        sum(1 for _ in paths.train_images.glob("*.png")) == params["num_train"]
        and sum(1 for _ in paths.test_images.glob("*.png")) == params["num_test"]
    )


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _generate_split(n, img_dir: Path, size, jitter, seed, split_id, bar) -> dict:
    images, annotations = [], []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_id, i]))
        pixels, objects = _render_image(rng, size, jitter)
        file_name = f"{i:06d}.png"
        Image.fromarray(pixels).save(img_dir / file_name, format="PNG", compress_level=1)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name,
                       "height": int(pixels.shape[0]), "width": int(pixels.shape[1])})
        for cls, (x0, y0, x1, y1), area, rle in objects:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cls + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": area,
                "iscrowd": 0,
                "segmentation": rle,
            })
        if bar is not None:
            bar.update(1)
    return {
        "info": {"description": "icdistill synthetic shapes", "version": _GENERATOR_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": c[0], "supercategory": "shape"}
                       for k, c in enumerate(SHAPE_CLASSES)],
    }


# ---------------------------------------------------------------------------------------------
# Rendering


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 [h, w, 3] in [0, 255]: smooth noise, a gradient or stripes, plus pixel noise."""
    kind = int(rng.integers(3))
    c0 = rng.uniform(0, 255, size=3)
    c1 = rng.uniform(0, 255, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # smooth noise: a coarse random grid upsampled
        gh, gw = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        coarse = rng.uniform(0, 1, size=(gh, gw)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    elif kind == 1:  # linear gradient along a random direction
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    else:  # stripes: a sine wave along a random direction
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 30)
        t = 0.5 + 0.5 * np.sin((xx * math.cos(a) + yy * math.sin(a)) * (2 * math.pi / period))
    img = c0.astype(np.float32) + t[..., None].astype(np.float32) * (c1 - c0).astype(np.float32)
    img = img.astype(np.float32)
    img += np.float32(rng.uniform(2, 8)) * rng.standard_normal(size=(h, w, 1), dtype=np.float32)
    return img


def _shape_mask(rng: np.random.Generator, cls: int, sw: int, sh: int) -> np.ndarray:
    """bool [sh, sw] mask of one shape drawn into its own box."""
    m = Image.new("L", (sw, sh), 0)
    d = ImageDraw.Draw(m)
    name = SHAPE_CLASSES[cls][0]
    if name == "circle":
        d.ellipse([0, 0, sw - 1, sh - 1], fill=255)
    elif name == "square":
        d.rectangle([0, 0, sw - 1, sh - 1], fill=255)
    elif name == "triangle":
        a = rng.uniform(0, 2 * math.pi)
        cx, cy, rx, ry = (sw - 1) / 2, (sh - 1) / 2, (sw - 1) / 2, (sh - 1) / 2
        pts = [(cx + rx * math.cos(a + k * 2 * math.pi / 3), cy + ry * math.sin(a + k * 2 * math.pi / 3))
               for k in range(3)]
        d.polygon(pts, fill=255)
    else:  # cross: two bars, randomly rotated
        a = rng.uniform(0, math.pi / 2)
        t = rng.uniform(0.22, 0.35)
        cx, cy, rx, ry = (sw - 1) / 2, (sh - 1) / 2, (sw - 1) / 2, (sh - 1) / 2
        for base in (a, a + math.pi / 2):
            ca, sa = math.cos(base), math.sin(base)
            # a bar: long half-axis 1, short half-axis t, in the unit disc, scaled to the box
            corners = [(1, t), (1, -t), (-1, -t), (-1, t)]
            pts = [(cx + rx * (u * ca - v * sa) / 1.05, cy + ry * (u * sa + v * ca) / 1.05)
                   for u, v in corners]
            d.polygon(pts, fill=255)
    return np.asarray(m, dtype=np.uint8) > 127


def _colour_far_from(rng: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    colour = rng.uniform(0, 255, size=3)
    for _ in range(10):
        if float(np.linalg.norm(colour - ref)) >= _MIN_COLOUR_DISTANCE:
            break
        colour = rng.uniform(0, 255, size=3)
    return colour


def _render_image(rng: np.random.Generator, size, jitter):
    """Returns (uint8 [h, w, 3] pixels, [(class, (x0, y0, x1, y1) ints, visible area, rle), ...]);
    ``rle`` is the compressed COCO RLE dict (``size`` [h, w], ``counts`` str) of the shape's
    visible pixels."""
    h = max(32, int(round(size[0] * rng.uniform(1 - jitter, 1 + jitter))))
    w = max(32, int(round(size[1] * rng.uniform(1 - jitter, 1 + jitter))))
    img = _background(rng, h, w)
    short = min(h, w)
    owner = np.full((h, w), -1, dtype=np.int32)  # index of the shape visible at each pixel
    full_area: list[int] = []
    classes: list[int] = []
    probs = np.array([c[1] for c in SHAPE_CLASSES])
    probs = probs / probs.sum()

    num_objects = int(rng.integers(1, 11))
    for _ in range(num_objects):
        cls = int(rng.choice(len(SHAPE_CLASSES), p=probs))
        lo, hi = SHAPE_CLASSES[cls][2], SHAPE_CLASSES[cls][3]
        s = math.exp(rng.uniform(math.log(lo), math.log(hi))) * short
        aspect = math.exp(rng.uniform(-0.25, 0.25))
        sw = int(np.clip(round(s * aspect), 4, w - 2))
        sh = int(np.clip(round(s / aspect), 4, h - 2))
        mask = _shape_mask(rng, cls, sw, sh)
        area = int(mask.sum())
        if area < 8:
            continue
        placed = False
        for _ in range(_PLACEMENT_TRIES):
            x0 = int(rng.integers(0, w - sw + 1))
            y0 = int(rng.integers(0, h - sh + 1))
            region = owner[y0:y0 + sh, x0:x0 + sw]
            covered = region[mask]
            covered = covered[covered >= 0]
            ok = True
            if covered.size:
                lost = np.bincount(covered, minlength=len(full_area))
                visible_now = np.bincount(owner[owner >= 0], minlength=len(full_area))
                remaining = visible_now - lost
                ok = bool(np.all(remaining >= _MIN_VISIBLE * np.asarray(full_area)))
            if ok:
                placed = True
                break
        if not placed:
            continue
        idx = len(full_area)
        region[mask] = idx
        full_area.append(area)
        classes.append(cls)
        patch = img[y0:y0 + sh, x0:x0 + sw]
        colour = _colour_far_from(rng, patch.reshape(-1, 3).mean(0))
        shade = rng.normal(0, 6, size=(sh, sw, 1)).astype(np.float32)
        patch[mask] = (colour + shade)[mask]

    pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    objects = []
    k = len(classes)
    ys, xs = np.nonzero(owner >= 0)
    ids = owner[ys, xs]
    x0, y0 = np.full(k, w), np.full(k, h)
    x1, y1 = np.full(k, -1), np.full(k, -1)
    np.minimum.at(x0, ids, xs)
    np.minimum.at(y0, ids, ys)
    np.maximum.at(x1, ids, xs)
    np.maximum.at(y1, ids, ys)
    counts = np.bincount(ids, minlength=k)
    for idx, cls in enumerate(classes):
        if counts[idx] == 0:
            continue
        box = (int(x0[idx]), int(y0[idx]), int(x1[idx]) + 1, int(y1[idx]) + 1)
        objects.append((cls, box, int(counts[idx]), _visible_rle(owner == idx)))
    return pixels, objects


def _visible_rle(visible: np.ndarray) -> dict:
    """Compressed COCO RLE of a bool [h, w] mask: ``{"size": [h, w], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
