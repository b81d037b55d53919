"""Instance queries: how many per image, fake instances from the dataset prior, centre jitter.

The instance counts, fake instances and jitter of docs/method.md ("Instances", "Query"). Boxes here are in
**normalised** xyxy coordinates: divided by the image's own resized, unpadded width and height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Fake box sizes are clipped to this range of the image side (the release's fake-instance sampler).
MIN_FAKE_SIZE, MAX_FAKE_SIZE = 0.002, 0.7
# Fake centres are kept this far inside the image (the release's fake-instance sampler).
MIN_FAKE_CENTRE, MAX_FAKE_CENTRE = 0.03, 0.97


def num_instances(num_real: int, *, fake_ratio: int = 5, max_instances: int = 300) -> int:
    """K_b = min(max(1, floor(n(1+r))), max(M, n)): real instances are never dropped and an image
    without annotations still gets one (fake) query."""
    return min(max(1, math.floor(num_real * (1 + fake_ratio))), max(max_instances, num_real))


@dataclass
class PriorTensors:
    """The dataset prior as tensors indexed by contiguous class id (shape [C] each)."""

    freq: Tensor
    w_mean: Tensor
    w_std: Tensor
    h_mean: Tensor
    h_std: Tensor


def sample_fake_instances(
    prior: PriorTensors, num: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``num`` fake instances from the prior.

    Returns:
        boxes: float Tensor[num, 4], normalised xyxy inside [0, 1]^2.
        labels: int64 Tensor[num], contiguous class ids drawn with probability ∝ freq.
    """
    device = prior.freq.device
    if num == 0:
        return torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device)
    probs = prior.freq.clamp_min(0)
    if float(probs.sum()) <= 0:  # a prior with no instances at all: sample classes uniformly
        probs = torch.ones_like(probs)
    labels = torch.multinomial(probs, num, replacement=True, generator=generator)

    def draw(mean: Tensor, std: Tensor) -> Tensor:
        mu, sigma = mean[labels], std[labels]
        value = mu + sigma * torch.randn(num, device=device, generator=generator)
        value = torch.maximum(torch.minimum(value, mu + 2 * sigma), mu - 2 * sigma)
        return value.clamp(MIN_FAKE_SIZE, MAX_FAKE_SIZE)

    w = draw(prior.w_mean, prior.w_std)
    h = draw(prior.h_mean, prior.h_std)
    centres = torch.rand(num, 2, device=device, generator=generator)
    centres = centres.clamp(MIN_FAKE_CENTRE, MAX_FAKE_CENTRE)
    boxes = torch.stack(
        [centres[:, 0] - w / 2, centres[:, 1] - h / 2, centres[:, 0] + w / 2, centres[:, 1] + h / 2],
        dim=1,
    )
    # A box that grows outside the image is cut; its centre and size follow from the cut box.
    return boxes.clamp(0.0, 1.0), labels


def jitter_centres(boxes: Tensor, ratio: float = 0.3, generator: torch.Generator | None = None) -> Tensor:
    """Centres moved by ε·(w, h), ε ~ U(−ratio, ratio) per instance and axis (the paper's query jitter).

    Args:
        boxes: float Tensor[..., 4], normalised xyxy.
    Returns:
        float Tensor[..., 2], the jittered (cx', cy') in normalised units.
    """
    wh = boxes[..., 2:] - boxes[..., :2]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    eps = (torch.rand(wh.shape, device=boxes.device, generator=generator) * 2 - 1) * ratio
    return centre + eps * wh


@dataclass
class Instances:
    """The padded instance slots of a batch: [0, n_b) real, [n_b, K_b) fake, rest padding.

    Attributes:
        labels: int64 Tensor[B, K] contiguous class ids (0 in padding slots).
        boxes: float Tensor[B, K, 4] normalised xyxy.
        centres: float Tensor[B, K, 2] jittered normalised centres.
        size_px: float Tensor[B, K, 2] box (w, h) in pixels of its own image (scale bins).
        is_real: bool Tensor[B, K].
        valid: bool Tensor[B, K] (real or fake, not padding).
    """

    labels: Tensor
    boxes: Tensor
    centres: Tensor
    size_px: Tensor
    is_real: Tensor
    valid: Tensor

    @property
    def num_real(self) -> Tensor:
        """int64 Tensor[B], real instances per image."""
        return self.is_real.sum(dim=1)


def build_instances(
    targets: list[dict[str, Tensor]],
    image_sizes: list[tuple[int, int]],
    prior: PriorTensors,
    *,
    fake_ratio: int = 5,
    max_instances: int = 300,
    jitter: float = 0.3,
    generator: torch.Generator | None = None,
) -> Instances:
    """Real instances from ``targets`` (boxes xyxy pixels of the resized image) plus fake ones.

    Each image's boxes are normalised by its own (h, w) from ``image_sizes``.
    """
    device = prior.freq.device
    per_image = []
    for target, (img_h, img_w) in zip(targets, image_sizes):
        scale = torch.tensor([img_w, img_h, img_w, img_h], dtype=torch.float32, device=device)
        real_boxes = (target["boxes"].to(device).float() / scale).clamp(0.0, 1.0)
        real_labels = target["labels"].to(device).long()
        n = real_boxes.shape[0]
        fake_boxes, fake_labels = sample_fake_instances(
            prior, num_instances(n, fake_ratio=fake_ratio, max_instances=max_instances) - n, generator
        )
        per_image.append((torch.cat([real_boxes, fake_boxes]), torch.cat([real_labels, fake_labels]), n, scale))

    batch, k_max = len(per_image), max(boxes.shape[0] for boxes, _, _, _ in per_image)
    labels = torch.zeros(batch, k_max, dtype=torch.long, device=device)
    boxes = torch.zeros(batch, k_max, 4, device=device)
    size_px = torch.zeros(batch, k_max, 2, device=device)
    is_real = torch.zeros(batch, k_max, dtype=torch.bool, device=device)
    valid = torch.zeros(batch, k_max, dtype=torch.bool, device=device)
    for b, (img_boxes, img_labels, n, scale) in enumerate(per_image):
        k = img_boxes.shape[0]
        labels[b, :k] = img_labels
        boxes[b, :k] = img_boxes
        size_px[b, :k] = (img_boxes[:, 2:] - img_boxes[:, :2]) * scale[:2]
        is_real[b, :n] = True
        valid[b, :k] = True
    centres = jitter_centres(boxes, jitter, generator)
    return Instances(labels, boxes, centres, size_px, is_real, valid)
