"""The dataset prior used to sample fake instances (Kang et al., NeurIPS 2021, §3.2; docs/method.md, "Instances").

Computed once from the training set actually used, from its annotations only (no image is
decoded), and stored as a small json file next to the run.

Per contiguous class k:

* ``freq[k]`` = number of training instances of class k / number of training images;
* ``w_mean[k]``, ``w_std[k]``: mean and **population** standard deviation (numpy ``ddof=0``) of
  box width / image width over the class's boxes; ``h_mean``, ``h_std`` likewise for heights.
  A class with exactly one box gets σ = 0.2·μ (μ the value of that box); a class with no box
  gets μ = σ = 0.2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np

from ..errors import DataError

__all__ = ["DatasetPrior", "compute_prior"]

_FIELDS = ("freq", "w_mean", "w_std", "h_mean", "h_std")


class _HasRecords(Protocol):
    class_names: list[str]

    def annotation_records(self) -> Iterable[tuple[int, int, Any, Any]]: ...


@dataclass
class DatasetPrior:
    """Per-class statistics of a training set; list index = contiguous class id.

    Attributes:
        names: class names.
        freq: instances per training image.
        w_mean, w_std: mean / population std of box width ÷ image width.
        h_mean, h_std: mean / population std of box height ÷ image height.
        num_images: number of training images the statistics come from.
    """

    names: list[str]
    freq: list[float]
    w_mean: list[float]
    w_std: list[float]
    h_mean: list[float]
    h_std: list[float]
    num_images: int

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """``{"num_images": N, "classes": [{"name", "freq", "w_mean", "w_std", "h_mean",
        "h_std"}, ...]}`` with classes in contiguous-id order."""
        return {
            "num_images": int(self.num_images),
            "classes": [
                {"name": self.names[k], **{f: float(getattr(self, f)[k]) for f in _FIELDS}}
                for k in range(len(self.names))
            ],
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "prior") -> "DatasetPrior":
        """Inverse of :meth:`to_dict`. Raises :class:`DataError` naming ``source`` if malformed."""
        try:
            classes = d["classes"]
            if not isinstance(classes, list) or not classes:
                raise ValueError("'classes' must be a non-empty list")
            num_images = int(d["num_images"])
            out: dict[str, list] = {f: [] for f in _FIELDS}
            names = []
            for c in classes:
                names.append(str(c["name"]))
                for f in _FIELDS:
                    v = float(c[f])
                    if not np.isfinite(v) or v < 0:
                        raise ValueError(f"class {c['name']!r}: {f} = {v} is not a finite value >= 0")
                    out[f].append(v)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}: malformed dataset prior ({e!r}); expected "
                            f'{{"num_images": N, "classes": [{{"name", "freq", "w_mean", '
                            f'"w_std", "h_mean", "h_std"}}, ...]}}') from e
        return cls(names=names, num_images=num_images, **out)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as json (parent folders created)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            raise DataError(f"cannot write dataset prior {path}: {e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetPrior":
        """Read a json written by :meth:`save`. Raises :class:`DataError` if missing/malformed."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"dataset prior file not found: {path} (compute it from the "
                            f"training set, e.g. with the CLI's prior command)")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read dataset prior {path}: {e}") from e
        return cls.from_dict(d, source=str(path))


def compute_prior(dataset: _HasRecords) -> DatasetPrior:
    """Compute the prior of ``dataset`` from ``dataset.annotation_records()``.

    Args:
        dataset: anything with ``class_names`` (list of C names) and ``annotation_records()``
            yielding ``(width, height, boxes, labels)`` per image: boxes xyxy pixels [N, 4],
            labels contiguous ids [N] (e.g. :class:`CocoDetection`).

    Raises:
        DataError: the data set has no images, or a label is outside 0..C-1.
    """
    names = list(dataset.class_names)
    C = len(names)
    ws: list[list[np.ndarray]] = [[] for _ in range(C)]
    hs: list[list[np.ndarray]] = [[] for _ in range(C)]
    num_images = 0
    for width, height, boxes, labels in dataset.annotation_records():
        num_images += 1
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        if lab.size and (lab.min() < 0 or lab.max() >= C):
            raise DataError(f"compute_prior: label {int(lab.max())} outside 0..{C - 1}")
        rw = (b[:, 2] - b[:, 0]) / float(width)
        rh = (b[:, 3] - b[:, 1]) / float(height)
        for k in np.unique(lab):
            sel = lab == k
            ws[k].append(rw[sel])
            hs[k].append(rh[sel])
    if num_images == 0:
        raise DataError("compute_prior: the training set has no images")

    stats: dict[str, list[float]] = {f: [] for f in _FIELDS}
    for k in range(C):
        w = np.concatenate(ws[k]) if ws[k] else np.zeros(0)
        h = np.concatenate(hs[k]) if hs[k] else np.zeros(0)
        stats["freq"].append(float(w.size) / num_images)
        for vals, mean_key, std_key in ((w, "w_mean", "w_std"), (h, "h_mean", "h_std")):
            if vals.size == 0:
                mu, sigma = 0.2, 0.2
            elif vals.size == 1:
                mu = float(vals[0])
                sigma = 0.2 * mu
            else:
                mu, sigma = float(vals.mean()), float(vals.std(ddof=0))
            stats[mean_key].append(mu)
            stats[std_key].append(sigma)
    return DatasetPrior(names=names, num_images=num_images, **stats)
