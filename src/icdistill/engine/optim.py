"""Optimisers and learning-rate schedules.

* Student: SGD with momentum, linear warm-up then step decay (detectron2's
  ``WarmupMultiStepLR``, ``solver.lr_schedule: step``) or cosine decay to zero at ``max_iter``
  (``cosine``), norm-layer parameters with their own weight decay.
* A distillation method with its own optimiser: AdamW with cosine decay from 1 to 0.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from icdistill.errors import ConfigError

# Normalisation layers whose affine parameters get ``weight_decay_norm`` (detectron2 semantics).
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def build_student_optimizer(
    model: nn.Module,
    *,
    base_lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    weight_decay_norm: float = 0.0,
) -> torch.optim.SGD:
    """SGD over ``model``'s trainable parameters.

    Parameters owned directly by a normalisation layer (BatchNorm, GroupNorm, LayerNorm, ...)
    use ``weight_decay_norm``; all others use ``weight_decay``. Parameters with
    ``requires_grad=False`` (frozen stages) are left out; a parameter shared by several modules
    is added once.

    Raises:
        ConfigError: the model has no trainable parameter.
    """
    normal: list[nn.Parameter] = []
    norm: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm if is_norm else normal).append(p)
    groups = [
        {"params": ps, "weight_decay": wd}
        for ps, wd in ((normal, weight_decay), (norm, weight_decay_norm))
        if ps
    ]
    if not groups:
        raise ConfigError(
            f"{type(model).__name__} has no trainable parameters; check the freeze settings"
        )
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, weight_decay=weight_decay)


def warmup_multistep_lambda(
    *,
    max_iter: int,
    warmup_iters: int,
    warmup_factor: float = 0.001,
    steps: Sequence[float] = (2 / 3, 8 / 9),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then ×``gamma`` at each step.

    For ``it < warmup_iters`` the factor goes linearly from ``warmup_factor`` (at 0) to 1 (at
    ``warmup_iters``). Steps are fractions of ``max_iter`` (the 1x schedule's 60k/80k of 90k is
    ``(2/3, 8/9)``), rounded to the nearest iteration; from a step's iteration onwards the factor
    is multiplied by ``gamma``.
    """
    if max_iter <= 0:
        raise ConfigError(f"max_iter must be positive, got {max_iter}")
    if warmup_iters < 0:
        raise ConfigError(f"warmup_iters must be >= 0, got {warmup_iters}")
    for s in steps:
        if not 0.0 < float(s) <= 1.0:
            raise ConfigError(f"LR steps are fractions of max_iter in (0, 1], got {list(steps)}")
    step_iters = sorted(int(round(float(s) * max_iter)) for s in steps)

    def factor(it: int) -> float:
        f = 1.0
        if it < warmup_iters:
            alpha = it / warmup_iters
            f = warmup_factor * (1.0 - alpha) + alpha
        return f * gamma ** bisect.bisect_right(step_iters, it)

    return factor


def warmup_cosine_lambda(*, max_iter: int, warmup_iters: int, warmup_factor: float = 0.001) -> Callable[[int], float]:
    """LR multiplier: the same linear warm-up as :func:`warmup_multistep_lambda`, times a cosine
    from 1 at iteration 0 to 0 at ``max_iter``: every run, short or long, ends at LR 0, so its
    last weights are not those of a step taken at a large LR."""
    cosine = cosine_lambda(max_iter=max_iter)
    warm = warmup_multistep_lambda(max_iter=max_iter, warmup_iters=warmup_iters, warmup_factor=warmup_factor,
                                   steps=(), gamma=1.0)
    return lambda it: warm(it) * cosine(it)


LR_SCHEDULES = ("step", "cosine")


def build_student_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    max_iter: int,
    warmup_iters: int,
    warmup_factor: float = 0.001,
    steps: Sequence[float] = (2 / 3, 8 / 9),
    gamma: float = 0.1,
    schedule: str = "step",
) -> LambdaLR:
    """Per-iteration :class:`LambdaLR` (call ``step()`` once per iteration):
    :func:`warmup_multistep_lambda` for ``schedule`` ``step``, :func:`warmup_cosine_lambda` for
    ``cosine`` (``steps`` and ``gamma`` unused)."""
    if schedule == "cosine":
        factor = warmup_cosine_lambda(max_iter=max_iter, warmup_iters=warmup_iters, warmup_factor=warmup_factor)
    elif schedule == "step":
        factor = warmup_multistep_lambda(max_iter=max_iter, warmup_iters=warmup_iters, warmup_factor=warmup_factor,
                                         steps=steps, gamma=gamma)
    else:
        raise ConfigError(f"config key 'solver.lr_schedule' is {schedule!r}; valid choices: {', '.join(LR_SCHEDULES)}")
    return LambdaLR(optimizer, factor)


def build_method_optimizer(
    module: nn.Module, *, lr: float = 1e-4, weight_decay: float = 1e-4
) -> torch.optim.AdamW:
    """AdamW over a distillation method's trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(module).__name__} has no trainable parameters")
    # The fused kernel updates all parameters in one pass; a decoder of many small tensors
    # costs more in the per-tensor loop than in the arithmetic.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def cosine_lambda(*, max_iter: int) -> Callable[[int], float]:
    """LR multiplier ``0.5 * (1 + cos(pi * it / max_iter))``: 1 at 0, 0 at ``max_iter``
    (and after)."""
    if max_iter <= 0:
        raise ConfigError(f"max_iter must be positive, got {max_iter}")

    def factor(it: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(it, max_iter) / max_iter))

    return factor


def build_method_scheduler(
    optimizer: torch.optim.Optimizer, *, max_iter: int, stage_iters: int = 0, stage_factor: float = 1.0
) -> LambdaLR:
    """Per-iteration cosine decay from the base LR to 0 over ``max_iter``; the first
    ``stage_iters`` iterations (a method-only stage) scaled by ``stage_factor``."""
    cosine = cosine_lambda(max_iter=max_iter)
    if stage_iters <= 0 or stage_factor == 1.0:
        return LambdaLR(optimizer, cosine)
    return LambdaLR(optimizer, lambda it: cosine(it) * (stage_factor if it < stage_iters else 1.0))


def scale_lr(base_lr_at_16: float, ims_per_batch: int) -> float:
    """Linear scaling rule: ``base_lr_at_16 * ims_per_batch / 16``."""
    if ims_per_batch <= 0:
        raise ConfigError(f"ims_per_batch must be positive, got {ims_per_batch}")
    return base_lr_at_16 * ims_per_batch / 16.0


def clip_gradients(
    params: Iterable[torch.Tensor] | torch.Tensor,
    *,
    value: float | None = None,
    max_norm: float | None = None,
) -> float | None:
    """Clip gradients in place.

    Args:
        params: tensors whose ``.grad`` to clip (those without a gradient are skipped).
        value: clamp each gradient element to ``[-value, value]`` (the student in distillation
            runs).
        max_norm: rescale so the total L2 norm is at most ``max_norm`` (a method's clip norm).
            Applied after ``value`` when both are given.

    Returns:
        The total gradient L2 norm before norm clipping when ``max_norm`` is given, else None.
    """
    if isinstance(params, torch.Tensor):
        params = [params]
    # Materialise: a generator such as model.parameters() would be exhausted by the first clip.
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0 if max_norm is not None else None
    if value is not None:
        torch.nn.utils.clip_grad_value_(with_grad, value)
    if max_norm is not None:
        return float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm))
    return None
