"""The batch that teacher and student share.

Images are augmented and resized once in the data pipeline, then normalised and padded here, so
the frozen teacher and the training student see identical pixels on an identical padded grid
(docs/method.md, "Teacher tokens, mask, PE") and their feature maps align token for token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

# torchvision's detection models are all trained with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_DIVISIBILITY = 32


@dataclass
class Batch:
    """A padded, normalised batch.

    Attributes:
        images: float Tensor[B, 3, Hp, Wp], normalised with ImageNet mean/std, zero-padded at the
            bottom and right so Hp and Wp are multiples of ``SIZE_DIVISIBILITY``.
        image_sizes: (h, w) of each resized, unpadded image, in pixels.
        targets: per image ``{"boxes": float Tensor[N, 4] xyxy in pixels of the resized image,
            "labels": int64 Tensor[N] contiguous class ids 0..C-1}``, plus ``"masks": uint8
            Tensor[N, h, w]`` (0/1 instance masks, one per box) when the dataset items have
            them; masks are not padded: (h, w) is that image's entry of ``image_sizes``.
        image_ids: dataset image id of each image (the evaluator's key).
        orig_sizes: (h, w) of each image as stored on disk, to map detections back for evaluation.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict[str, Tensor]]
    image_ids: list[int]
    orig_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            images=self.images.to(device, non_blocking=True),
            image_sizes=self.image_sizes,
            targets=[{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in self.targets],
            image_ids=self.image_ids,
            orig_sizes=self.orig_sizes,
        )

    def unnormalised_images(self) -> list[Tensor]:
        """The images as float Tensor[3, h, w] in [0, 1], padding cut off (for plots)."""
        mean = torch.tensor(IMAGENET_MEAN, device=self.images.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.images.device).view(3, 1, 1)
        return [
            (self.images[i, :, :h, :w] * std + mean).clamp(0, 1)
            for i, (h, w) in enumerate(self.image_sizes)
        ]


def collate_batch(items: Sequence[tuple[Tensor, dict[str, Any]]]) -> Batch:
    """Normalise and pad dataset items into one :class:`Batch`.

    Args:
        items: ``(image, target)`` pairs; image is float Tensor[3, h, w] in [0, 1]; target has
            ``boxes`` (xyxy pixels), ``labels`` (int64, contiguous), ``image_id`` (int) and
            ``orig_size`` ((h, w) on disk), optionally ``masks`` (uint8 Tensor[N, h, w], kept
            as is in the batch's target, unpadded).
    """
    if not items:
        raise ValueError("collate_batch got an empty list of items")
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img, _ in items]
    div = SIZE_DIVISIBILITY
    pad_h = -(-max(h for h, _ in sizes) // div) * div
    pad_w = -(-max(w for _, w in sizes) // div) * div
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = torch.zeros(len(items), 3, pad_h, pad_w)
    for i, (img, _) in enumerate(items):
        h, w = sizes[i]
        images[i, :, :h, :w] = (img.float() - mean) / std
    targets = [
        {"boxes": t["boxes"].reshape(-1, 4).float(), "labels": t["labels"].reshape(-1).long()}
        for _, t in items
    ]
    for (_, t), tgt, (h, w) in zip(items, targets, sizes):
        if "masks" in t:
            tgt["masks"] = torch.as_tensor(t["masks"]).to(torch.uint8).reshape(-1, h, w)
    image_ids = [int(t["image_id"]) for _, t in items]
    orig_sizes = [tuple(int(v) for v in t.get("orig_size", s)) for (_, t), s in zip(items, sizes)]
    return Batch(images, sizes, targets, image_ids, orig_sizes)
