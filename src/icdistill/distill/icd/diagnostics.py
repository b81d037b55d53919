"""Whether ICD's decoder really is instance-conditional: four numbers on held-out images.

* ``icd/idf_auroc``: AUROC of the auxiliary head's identification logit, real vs fake queries
  (0.5 = the decoder tells them apart no better than chance; a constant predictor gives 0.5).
* ``icd/attn_in_box``: mean attention mass (last layer, head-averaged, over all distilled
  levels) that a real instance's query puts on tokens whose centres lie inside its own box.
* ``icd/attn_in_box_uniform``: the same for uniform attention over the valid tokens: what a
  decoder that ignores the instance scores.
* ``icd/attn_distinct``: mean total-variation distance between the attention maps of two real
  instances of one image (0 = identical maps, 1 = disjoint).

With the position prior (this project's design) any kernel centred on the box raises
``attn_in_box`` and ``attn_distinct``, learned or not. So the same numbers are also reported for
the **kernel alone**, the decoder run with its learned content logits q·k dropped (attention =
softmax of the fixed position term): ``icd/idf_auroc_kernel``, ``icd/attn_in_box_kernel``,
``icd/attn_distinct_kernel``. What the decoder learned is the difference between a number and
its ``_kernel`` row. The paper's decoder has no kernel, so these rows are absent there (its
``attn_in_box`` is compared with ``attn_in_box_uniform`` alone).

Instances are drawn as in training (fake ones from the prior, centres jittered) from a
generator of their own, so evaluating never changes the training run's random stream.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from icdistill.distill.icd.sampling import build_instances
from icdistill.structures import collate_batch

# Below this AUROC the decoder is reported as not having learned identification.
UNLEARNED_AUROC = 0.6
# With the position prior, attention in the box below this multiple of the kernel's alone is
# reported as coming from the kernel, not from what the decoder learned.
KERNEL_ONLY_RATIO = 1.05


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties).

    Args:
        scores: float Tensor[N]; positive: bool Tensor[N].
    Returns:
        In [0, 1]; NaN when either class is empty. Equal scores for all give 0.5.
    """
    scores, positive = scores.flatten().double(), positive.flatten().bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    uniques, inverse = torch.unique(scores, return_inverse=True)
    # Average rank of each group of equal scores.
    sums = torch.zeros(len(uniques), dtype=scores.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniques), dtype=scores.dtype).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def token_centres(level_shapes: Sequence[tuple[int, int]], strides: Sequence[int], device=None) -> Tensor:
    """Pixel centres ((x + 0.5)·s, (y + 0.5)·s) of every token, levels concatenated in token
    order: float Tensor[S, 2] as (x, y)."""
    per_level = []
    for (h, w), s in zip(level_shapes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        per_level.append(torch.stack([xs.flatten(), ys.flatten()], dim=1).float().add(0.5).mul(s))
    return torch.cat(per_level)


def inside_boxes(centres: Tensor, boxes: Tensor) -> Tensor:
    """bool Tensor[n, S]: token s's centre (float [S, 2] (x, y)) lies in box i (float [n, 4] xyxy)."""
    x, y = centres[None, :, 0], centres[None, :, 1]
    return (x >= boxes[:, None, 0]) & (x <= boxes[:, None, 2]) & (y >= boxes[:, None, 1]) & (y <= boxes[:, None, 3])


def attention_in_boxes(probs: Tensor, inside: Tensor) -> Tensor:
    """Attention mass of each query inside its box: float Tensor[n] from probs float [n, S]
    (rows sum to 1) and ``inside`` bool [n, S]."""
    return (probs * inside).sum(dim=1)


def uniform_in_boxes(inside: Tensor, valid: Tensor) -> Tensor:
    """The same for uniform attention over the valid tokens (bool [S]): float Tensor[n]."""
    return (inside & valid[None]).sum(dim=1).float() / valid.sum().clamp_min(1)


def attention_distinctness(probs: Tensor) -> Tensor:
    """Total-variation distance 0.5·Σ_s |p_i − p_j| of every pair of rows of probs float [n, S]:
    float Tensor[n(n−1)/2] (empty for n < 2)."""
    i, j = torch.triu_indices(len(probs), len(probs), offset=1, device=probs.device)
    return 0.5 * (probs[i] - probs[j]).abs().sum(dim=1)


@torch.no_grad()
def icd_diagnostics(
    icd, teacher, dataset, levels: Sequence[str], strides: Sequence[int], device: torch.device,
    *, max_images: int = 32, seed: int = 0,
) -> dict[str, float]:
    """The four numbers (and, with the position prior, the kernel's three) on the first
    ``max_images`` annotated images of ``dataset``."""
    # Reading images may draw from the global generators; the training stream must not move.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _diagnostics(icd, teacher, dataset, levels, strides, device, max_images, seed)


class _Numbers:
    """Per-image parts of the diagnostics, concatenated at the end."""

    def __init__(self) -> None:
        self.scores: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.in_box: list[Tensor] = []
        self.distinct: list[Tensor] = []

    def add(self, logits: Tensor, inst, probs: Tensor, inside: Tensor) -> None:
        """logits float [1, K]; probs float [n, S] (real queries, head-averaged); inside bool [n, S]."""
        self.scores.append(logits[inst.valid])
        self.labels.append(inst.is_real[inst.valid])
        self.in_box.append(attention_in_boxes(probs, inside))
        self.distinct.append(attention_distinctness(probs))

    def summary(self, suffix: str = "") -> dict[str, float]:
        mean = lambda parts: float(torch.cat(parts).mean()) if sum(len(p) for p in parts) else math.nan  # noqa: E731
        return {
            f"icd/idf_auroc{suffix}": auroc(torch.cat(self.scores), torch.cat(self.labels)),
            f"icd/attn_in_box{suffix}": mean(self.in_box),
            f"icd/attn_distinct{suffix}": mean(self.distinct),
        }


def _diagnostics(icd, teacher, dataset, levels, strides, device, max_images: int, seed: int) -> dict[str, float]:
    generator = torch.Generator(device=icd.prior_freq.device).manual_seed(seed)
    was_training = icd.training
    icd.eval()
    learned, kernel, uniform = _Numbers(), _Numbers(), []
    used = 0
    for index in range(len(dataset)):
        if used >= max_images:
            break
        item = dataset[index]
        if item[1]["boxes"].shape[0] == 0:
            continue
        used += 1
        batch = collate_batch([item]).to(device)
        features = teacher.features(batch.images)
        tokens = icd.teacher_tokens([features[name] for name in levels], strides, batch.image_sizes)
        inst = build_instances(batch.targets, batch.image_sizes, icd.prior, fake_ratio=icd.fake_ratio,
                               max_instances=icd.max_instances, jitter=icd.jitter, generator=generator)
        n = int(inst.num_real[0])
        inside = inside_boxes(token_centres(tokens.level_shapes, strides, device), batch.targets[0]["boxes"])
        uniform.append(uniform_in_boxes(inside, tokens.valid[0]))
        # Real queries, head-averaged: [n, S].
        for numbers, content in ((learned, True), (kernel, False)) if icd.position_prior else ((learned, True),):
            logits = icd.predictions(tokens, inst, content=content)[..., 0]
            probs = icd.attention(tokens, inst, content=content)[0, :, :n].mean(dim=0)
            numbers.add(logits, inst, probs, inside)
    icd.train(was_training)
    if not used:
        return {}
    result = learned.summary()
    result["icd/attn_in_box_uniform"] = float(torch.cat(uniform).mean()) if uniform else math.nan
    if icd.position_prior:
        result.update(kernel.summary("_kernel"))
    return result


def diagnostic_warnings(metrics: dict[str, float], position_prior: bool = False) -> list[str]:
    """Plain sentences for a decoder that has not learned what ICD needs; the remedies named
    leave out the position prior when the run already has it. With the prior, attention in the
    box that the kernel alone (``icd/attn_in_box_kernel``) already reaches is reported too."""
    notes = []
    value = metrics.get("icd/idf_auroc")
    if value is not None and not math.isnan(value) and value < UNLEARNED_AUROC:
        warmup = "distill.icd.decoder_warmup_iters, distill.icd.decoder_warmup_lr"
        remedy = (f"A longer decoder warm-up ({warmup}) helps" if position_prior else
                  f"A longer or faster decoder warm-up ({warmup}) or this project's position prior "
                  "(distill.icd.position_prior: true, not the paper's design) help")
        notes.append(
            f"ICD's decoder has not learned identification (icd/idf_auroc {value:.2f}; 0.5 is chance): its "
            "attention does not depend on the instance, so the distillation is imitation weighted by a "
            f"salient-region map. {remedy}."
        )
    in_box, uniform = metrics.get("icd/attn_in_box"), metrics.get("icd/attn_in_box_uniform")
    if in_box is not None and uniform and not math.isnan(in_box) and in_box < 1.5 * uniform:
        notes.append(
            f"ICD's attention is hardly on the instances: {in_box:.3f} of a query's attention lies in its own box, "
            f"uniform attention would put {uniform:.3f} there."
        )
    kernel = metrics.get("icd/attn_in_box_kernel")
    if (position_prior and in_box is not None and kernel is not None and not math.isnan(in_box)
            and not math.isnan(kernel) and in_box < KERNEL_ONLY_RATIO * kernel):
        notes.append(
            f"ICD's attention on the instances comes from the position kernel, not from what the decoder learned: "
            f"{in_box:.3f} of a query's attention lies in its own box, the kernel alone puts {kernel:.3f} there."
        )
    return notes
