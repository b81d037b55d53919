"""Pictures of images as PNG files: a distillation method's attention overlays (ICD's) and a
detector's detections. (Line plots, the training curves included, are :mod:`.plots`'.)

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` +
``FigureCanvasAgg``) instead of through ``pyplot``, so nothing needs a display and the global
backend of a user's interactive session is left untouched. Files are written atomically.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from icdistill.files import write_bytes_atomic


def _image_to_numpy(image: Tensor) -> np.ndarray:
    """float Tensor[3, h, w] in [0, 1] -> float array [h, w, 3] clipped to [0, 1]."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be Tensor[3, h, w], got shape {tuple(image.shape)}")
    img = image.detach().float().cpu()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).clamp(0, 1).numpy()


def _attention_to_numpy(att: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Attention Tensor[h', w'] (or with leading singleton dims) -> [h, w] array in [0, 1]."""
    a = att.detach().float().cpu()
    if a.ndim < 2 or any(d != 1 for d in a.shape[:-2]):
        raise ValueError(f"attention map must be Tensor[h', w'], got shape {tuple(att.shape)}")
    a = a.reshape(1, 1, a.shape[-2], a.shape[-1])
    if tuple(a.shape[-2:]) != size:
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    a = torch.nan_to_num(a[0, 0])
    lo, hi = float(a.min()), float(a.max())
    # Per-map min-max normalisation: raw attention weights sum to 1 over many tokens, so their
    # absolute scale is tiny and not comparable across instances.
    a = (a - lo) / (hi - lo) if hi > lo else torch.zeros_like(a)
    return a.numpy()


def _box_list(boxes: Tensor | None) -> list[list[float]]:
    if boxes is None:
        return []
    return torch.as_tensor(boxes).detach().float().cpu().reshape(-1, 4).tolist()


def _draw_box(ax: Any, box: Sequence[float], color: Any, linewidth: float = 2.0) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(
        Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth)
    )


def _new_figure(rows: int, cols: int, panel_inches: float = 3.5) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(panel_inches * cols, panel_inches * rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return write_bytes_atomic(path, buf.getvalue())


def save_attention_overlays(
    path: str | os.PathLike[str],
    image: Tensor,
    boxes: Tensor,
    labels: Sequence[str] | None,
    attention_maps: Sequence[Tensor],
    title: str | None = None,
    *,
    max_instances: int = 6,
    alpha: float = 0.5,
) -> Path:
    """Plot each instance's ICD attention over the image, plus an "all instances" panel.

    Args:
        path: output PNG.
        image: float Tensor[3, h, w] in [0, 1] (e.g. ``Batch.unnormalised_images()[i]``).
        boxes: float Tensor[N, 4] xyxy in pixels of ``image``.
        labels: optional caption per instance (e.g. class names).
        attention_maps: N tensors [h', w'], one per instance, on the image grid or on a feature
            grid (then bilinearly upsampled to (h, w)). Each is min-max normalised to [0, 1].
        title: optional figure title.
        max_instances: at most this many per-instance panels (the first ones).
        alpha: opacity of the heat map.

    The "all instances" panel shows the element-wise maximum of the shown normalised maps with
    every shown box.
    """
    img = _image_to_numpy(image)
    h, w = img.shape[:2]
    box_list = _box_list(boxes)
    if len(attention_maps) != len(box_list):
        raise ValueError(
            f"got {len(attention_maps)} attention maps for {len(box_list)} boxes; need one each"
        )
    if labels is not None and len(labels) != len(box_list):
        raise ValueError(f"got {len(labels)} labels for {len(box_list)} boxes")
    n = min(len(box_list), max(0, max_instances))
    maps = [_attention_to_numpy(attention_maps[i], (h, w)) for i in range(n)]

    panels = n + 1
    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    fig, axes = _new_figure(rows, cols)
    cmap = colormaps["tab10"]
    for i in range(n):
        ax = axes[i]
        ax.imshow(img)
        ax.imshow(maps[i], cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        _draw_box(ax, box_list[i], cmap(i % 10))
        ax.set_title(f"#{i}" + (f" {labels[i]}" if labels is not None else ""), fontsize=9)
    ax = axes[n]
    ax.imshow(img)
    if maps:
        ax.imshow(np.maximum.reduce(maps), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    for i in range(n):
        _draw_box(ax, box_list[i], cmap(i % 10))
    ax.set_title("all instances", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def save_detections(
    path: str | os.PathLike[str],
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    class_names: Sequence[str],
    score_thresh: float = 0.3,
) -> Path:
    """Draw detections with score >= ``score_thresh`` on the image.

    Args:
        image: float Tensor[3, h, w] in [0, 1].
        boxes: float Tensor[K, 4] xyxy in pixels of ``image``.
        labels: int64 Tensor[K] contiguous class ids indexing ``class_names``.
        scores: float Tensor[K].
    """
    img = _image_to_numpy(image)
    box_list = _box_list(boxes)
    label_list = [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]
    score_list = [float(v) for v in torch.as_tensor(scores).reshape(-1).tolist()]
    if not (len(box_list) == len(label_list) == len(score_list)):
        raise ValueError(
            f"boxes, labels and scores differ in length "
            f"({len(box_list)}, {len(label_list)}, {len(score_list)})"
        )
    fig, axes = _new_figure(1, 1, panel_inches=8.0)
    ax = axes[0]
    ax.imshow(img)
    cmap = colormaps["tab20"]
    shown = 0
    for box, lab, score in zip(box_list, label_list, score_list):
        if score < score_thresh:
            continue
        shown += 1
        color = cmap(lab % 20)
        _draw_box(ax, box, color)
        name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
        ax.text(
            box[0], box[1], f"{name} {score:.2f}", fontsize=8, color="white",
            verticalalignment="bottom", bbox={"facecolor": color, "alpha": 0.8, "pad": 1,
                                              "edgecolor": "none"},
        )
    ax.set_title(f"{shown} detections (score >= {score_thresh:g})", fontsize=10)
    ax.set_axis_off()
    return _save(fig, path)
