"""Pictures of ICD's per-instance decoder attention on test images (``viz/attention_*.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icdistill.structures import collate_batch
from icdistill.viz import save_attention_overlays


def attention_maps_per_instance(
    level_maps: list[Tensor], padded_size: tuple[int, int], image_size: tuple[int, int]
) -> Tensor:
    """Sum of each instance's attention over levels, upsampled to the image.

    Args:
        level_maps: per level float Tensor[n, H_l, W_l].
        padded_size: (Hp, Wp) of the padded batch; image_size: (h, w) of the image.
    Returns:
        float Tensor[n, h, w].
    """
    total = None
    for level in level_maps:
        up = F.interpolate(level[:, None], size=padded_size, mode="bilinear", align_corners=False)[:, 0]
        total = up if total is None else total + up
    h, w = image_size
    return total[:, :h, :w]


@torch.no_grad()
def save_attention_examples(
    icd: nn.Module, teacher: nn.Module, dataset, levels: Sequence[str], strides: Sequence[int],
    out_dir: Path, count: int, device: torch.device,
) -> list[Path]:
    """PNG overlays of the ICD decoder's per-instance attention on the first ``count`` test images
    that have annotations. Returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = icd.training
    icd.eval()
    written: list[Path] = []
    for index in range(len(dataset)):
        if len(written) >= count:
            break
        item = dataset[index]
        if item[1]["boxes"].shape[0] == 0:
            continue
        batch = collate_batch([item]).to(device)
        features = teacher.features(batch.images)
        per_image = icd.instance_attention([features[name] for name in levels], batch.targets, batch.image_sizes, strides)
        maps = attention_maps_per_instance(per_image[0], tuple(batch.images.shape[-2:]), batch.image_sizes[0])
        names = [dataset.class_names[int(c)] for c in batch.targets[0]["labels"]]
        path = out_dir / f"attention_{batch.image_ids[0]:06d}.png"
        save_attention_overlays(
            path, batch.unnormalised_images()[0].cpu(), batch.targets[0]["boxes"].cpu(), names,
            [m.cpu() for m in maps], title=f"ICD attention, image {batch.image_ids[0]}",
        )
        written.append(path)
    icd.train(was_training)
    return written
