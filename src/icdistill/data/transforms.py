"""Detection transforms: resize (random short side when training), horizontal flip, to float.

Built on ``torchvision.transforms.v2`` with ``tv_tensors.Image``, ``tv_tensors.BoundingBoxes``
(format XYXY) and, when the target has instance masks, ``tv_tensors.Mask``, so boxes and masks
follow every geometric change of the image exactly (masks are resized with nearest-neighbour
interpolation). All randomness comes from the global torch RNG (``torch.rand`` /
``torch.randint``); :class:`CocoDetection` seeds it per item under ``torch.random.fork_rng``
when given an ``aug_seed``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import ConfigError

__all__ = ["DetectionTransforms", "build_transforms"]


class DetectionTransforms:
    """Callable ``(image, target) -> (image, target)``.

    Input: ``image`` uint8 Tensor[3, H, W] (or float in [0, 1]); ``target`` with ``boxes``
    float Tensor[N, 4] xyxy pixels of that image and ``labels`` int64 Tensor[N], optionally
    ``masks`` uint8 Tensor[N, H, W] (0/1 instance masks, one per box); other keys are passed
    through unchanged.

    Output: ``image`` plain float32 Tensor[3, h, w] in [0, 1]; ``target["boxes"]`` plain float32
    Tensor[M, 4] xyxy pixels of the transformed image and ``target["labels"]`` int64 Tensor[M],
    where boxes narrower or lower than ``min_box_size`` pixels (or under 1 px²) after the
    transform are dropped together with their labels (M <= N). When the input has ``masks``,
    ``target["masks"]`` is a plain uint8 Tensor[M, h, w], moved with the image (resize, flip)
    and kept aligned with the boxes (a dropped box drops its mask).
    """

    def __init__(self, pipeline: v2.Transform, *, train: bool, description: str) -> None:
        self.pipeline = pipeline
        self.train = train
        self.description = description

    def __repr__(self) -> str:
        return f"DetectionTransforms({self.description})"

    def __call__(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        img = tv_tensors.Image(image)
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=(h, w),
        )
        labels = torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)
        inputs: dict[str, Any] = {"boxes": boxes, "labels": labels}
        if "masks" in target:
            masks = torch.as_tensor(target["masks"], dtype=torch.uint8).reshape(-1, h, w)
            if masks.shape[0] != boxes.shape[0]:
                raise ValueError(f"target has {masks.shape[0]} masks but {boxes.shape[0]} boxes; "
                                 f"they must be aligned one-to-one")
            inputs["masks"] = tv_tensors.Mask(masks)
        out_img, out = self.pipeline(img, inputs)
        result = dict(target)
        result["boxes"] = out["boxes"].as_subclass(Tensor).float().reshape(-1, 4)
        result["labels"] = out["labels"].as_subclass(Tensor).long().reshape(-1)
        if "masks" in out:
            oh, ow = int(out_img.shape[-2]), int(out_img.shape[-1])
            result["masks"] = out["masks"].as_subclass(Tensor).to(torch.uint8).reshape(-1, oh, ow)
        return out_img.as_subclass(Tensor), result


def build_transforms(
    *,
    train: bool,
    min_sizes: Sequence[int],
    max_size: int,
    flip_prob: float = 0.5,
    min_box_size: float = 1.0,
) -> DetectionTransforms:
    """Build the train or test transform.

    Args:
        train: True: short side drawn uniformly from ``min_sizes`` (``v2.RandomShortestSize``),
            then a horizontal flip with probability ``flip_prob``. False: short side resized to
            ``min_sizes[0]`` (the test size; further entries are ignored), no flip.
        min_sizes: short-side sizes in pixels.
        max_size: the long side is capped at this many pixels (the short side then shrinks
            below the chosen size, keeping the aspect ratio).
        flip_prob: probability of a horizontal flip (train only), in [0, 1].
        min_box_size: boxes with width or height below this many pixels after the transform
            are dropped (``v2.SanitizeBoundingBoxes``), labels (and masks, when the target has
            them) kept aligned.

    Returns:
        A :class:`DetectionTransforms` callable.

    Raises:
        ConfigError: empty or non-positive sizes, or a flip probability outside [0, 1].
    """
    sizes = [int(s) for s in min_sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ConfigError(f"transforms: min_sizes must be a non-empty list of positive ints, "
                          f"got {list(min_sizes)}")
    if int(max_size) <= 0:
        raise ConfigError(f"transforms: max_size must be positive, got {max_size}")
    if not 0.0 <= float(flip_prob) <= 1.0:
        raise ConfigError(f"transforms: flip_prob must be in [0, 1], got {flip_prob}")
    if train:
        steps: list[v2.Transform] = [
            v2.RandomShortestSize(min_size=sizes, max_size=int(max_size), antialias=True)]
        if flip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(p=float(flip_prob)))
        desc = f"train, short side in {sizes}, long side <= {max_size}, flip p={flip_prob}"
    else:
        steps = [v2.RandomShortestSize(min_size=[sizes[0]], max_size=int(max_size),
                                       antialias=True)]
        desc = f"test, short side {sizes[0]}, long side <= {max_size}"
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.ClampBoundingBoxes(),
        # the default labels_getter finds target["labels"] (and keeps the transform picklable)
        v2.SanitizeBoundingBoxes(min_size=float(min_box_size), min_area=1.0),
    ]
    return DetectionTransforms(v2.Compose(steps), train=train, description=desc)
