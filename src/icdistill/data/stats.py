"""What ``icdistill stats`` shows about a dataset: the class table of both splits and what the
data report found (layout, how the split was made, repairs, skipped files).

Box sizes are in pixels of the images on disk (before any resize); small / medium / large use
COCO's area thresholds (32², 96²).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .class_names import describe_similar
from .coco import CocoDetection

__all__ = ["class_table", "format_class_table", "format_data_report"]

_SMALL, _LARGE = 32.0 ** 2, 96.0 ** 2


def _split_counts(ds: CocoDetection) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per class: kept boxes, images holding at least one, and the boxes' ``(w, h)`` float
    ndarray[n, 2] (pixels on disk)."""
    c = ds.num_classes
    boxes, images = np.zeros(c, dtype=np.int64), np.zeros(c, dtype=np.int64)
    sizes: list[list[np.ndarray]] = [[] for _ in range(c)]
    for _, _, xyxy, labels in ds.annotation_records():
        if not len(labels):
            continue
        boxes += np.bincount(labels, minlength=c)
        images[np.unique(labels)] += 1
        wh = np.stack([xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1)
        for k in np.unique(labels):
            sizes[k].append(wh[labels == k])
    return boxes, images, [np.concatenate(s) if s else np.zeros((0, 2)) for s in sizes]


def class_table(train: CocoDetection, test: CocoDetection) -> list[dict[str, Any]]:
    """One row per class: ``name``, ``train_boxes``, ``train_images``, ``test_boxes``,
    ``test_images``, and over the training boxes ``w_median``, ``h_median`` (pixels on disk) and
    ``small`` / ``medium`` / ``large`` (fractions by COCO area; NaN for a class without boxes)."""
    tr_boxes, tr_images, tr_sizes = _split_counts(train)
    te_boxes, te_images, _ = _split_counts(test)
    rows = []
    for k, name in enumerate(train.class_names):
        wh = tr_sizes[k]
        area = wh[:, 0] * wh[:, 1]
        share = (lambda m: float(m.mean()) if len(area) else float("nan"))  # noqa: E731
        rows.append({
            "name": name,
            "train_boxes": int(tr_boxes[k]), "train_images": int(tr_images[k]),
            "test_boxes": int(te_boxes[k]), "test_images": int(te_images[k]),
            "w_median": float(np.median(wh[:, 0])) if len(wh) else float("nan"),
            "h_median": float(np.median(wh[:, 1])) if len(wh) else float("nan"),
            "small": share(area < _SMALL), "medium": share((area >= _SMALL) & (area < _LARGE)),
            "large": share(area >= _LARGE),
        })
    return rows


def format_class_table(rows: list[dict[str, Any]], num_train: int, num_test: int) -> str:
    """The class table as Markdown (``num_train`` / ``num_test``: images per split)."""
    head = ("| class | train boxes | train images | test boxes | test images | "
            "median w x h px (train) | small / medium / large (train) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = ("-" if np.isnan(r["w_median"])
                else f"{r['w_median']:.0f} x {r['h_median']:.0f}")
        shares = ("-" if np.isnan(r["small"]) else
                  " / ".join(f"{100 * r[k]:.0f}%" for k in ("small", "medium", "large")))
        lines.append(f"| {r['name']} | {r['train_boxes']} | {r['train_images']} | "
                     f"{r['test_boxes']} | {r['test_images']} | {size} | {shares} |")
    total = [sum(r[k] for r in rows) for k in ("train_boxes", "test_boxes")]
    lines.append(f"| (all) | {total[0]} | {num_train} | {total[1]} | {num_test} | | |")
    return "\n".join(lines)


def format_data_report(report: dict[str, dict[str, Any]]) -> str:
    """What :func:`icdistill.data.build.data_report` found, split by split: source, images,
    boxes kept, the reader's layout and split, and each problem with a few of its files."""
    lines = []
    for split, r in report.items():
        lines.append(f"{split}: {r['num_images']} images, {r['kept_annotations']} of "
                     f"{r['num_annotations']} annotations kept as boxes ({r['source']})")
        for key, value in r.get("reader", {}).items():
            if key != "format" and value not in (None, "", 0):
                lines.append(f"  {key.replace('_', ' ')}: {value}")
        for alias, merge in r.get("merged_classes", {}).items():
            lines.append(f"  class {alias!r} merged into {merge['into']!r} "
                         f"({merge['annotations']} annotations; data.class_aliases)")
        if r.get("similar_class_names"):
            lines += ["  " + line for line in describe_similar(r["similar_class_names"]).splitlines()]
        if r.get("grouping_category"):
            lines.append(f"  left out category {r['grouping_category']!r} (groups the others, no box)")
        for problem, n in r["counts"].items():
            if n:
                names = r["files"].get(problem, [])
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                lines.append(f"  {problem.replace('_', ' ')}: {n}" + (f" ({shown})" if shown else ""))
    return "\n".join(lines)
