"""Splitting a dense one-stage head (RetinaNet, FCOS, CondInst) at a tower layer: the
``head_hold`` extra and the ``head_from`` call.

A torchvision dense head has two towers, classification and regression, each ``n`` layers of
conv -> optional norm -> ReLU (n = 4), followed by the predictor convs. This module

* flattens a tower into its primitive modules (RetinaNet's ``Conv2dNormActivation`` blocks are
  opened; FCOS's tower is already flat) and finds its ReLUs: layer ``k`` (1..n) is *held*
  at the input of its ReLU, i.e. after its conv and norm; ``k = 0`` is the tower's input (the
  FPN level);
* captures those held activations from the detector's own head pass with forward hooks
  (:func:`capture_head_holds`): the head is not run twice. Every layer's hold is kept (the
  extras are requested by name, not by layer), so a captured pass holds up to n more tower
  activations per tower and level until the step's losses are computed;
* runs a head from layer ``k`` on given tensors (:func:`head_from`): the tower's remainder
  (the ``k``-th ReLU and everything after it) and the predictors, with autograd on, reshaped
  exactly as torchvision's head reshapes (``[B, A*K, H, W] -> [B, H*W*A, K]``, levels
  concatenated finest first). Run on a frozen teacher, gradients reach the given tensors and
  not the teacher's parameters (which have ``requires_grad=False``).

CrossKD (Wang et al., CVPR 2024) is the method that needs this: the student's held tower
features go through the teacher's remaining head layers.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

TOWERS = ("cls", "reg")


@dataclass
class HeadHolds:
    """Held tower activations of one head pass (the ``head_hold`` extra).

    Attributes:
        cls: ``cls[k][l]`` float Tensor[B, C, H_l, W_l], the classification tower at layer
            ``k`` (0 = the tower's input, k >= 1 = layer k after conv and norm, before its
            ReLU) on level ``l`` (finest first). ``k`` runs over 0..n.
        reg: the same for the regression tower.
    """

    cls: list[list[Tensor]] = field(default_factory=list)
    reg: list[list[Tensor]] = field(default_factory=list)

    def at(self, tower: str, k: int) -> list[Tensor]:
        """The per-level holds of ``tower`` (``cls`` / ``reg``) at layer ``k``."""
        return getattr(self, tower)[k]


def flat_tower(tower: nn.Module) -> list[nn.Module]:
    """The primitive modules of a tower ``Sequential`` in call order (nested Sequentials opened)."""
    out: list[nn.Module] = []
    for child in tower.children():
        out.extend(flat_tower(child) if isinstance(child, nn.Sequential) else [child])
    return out


def relu_positions(flat: list[nn.Module]) -> list[int]:
    """Indices in ``flat`` of the tower's ReLUs, one per layer; ValueError when the tower does
    not end with a ReLU or a ReLU has nothing before it (not a conv tower)."""
    positions = [i for i, m in enumerate(flat) if isinstance(m, nn.ReLU)]
    if not positions or positions[-1] != len(flat) - 1 or positions[0] == 0:
        raise ValueError(f"not a conv -> [norm] -> ReLU tower: {[type(m).__name__ for m in flat]}")
    return positions


def dense_towers(head: nn.Module) -> dict[str, nn.Module]:
    """``{"cls": tower, "reg": tower}`` of a torchvision RetinaNet / FCOS head (and heads built
    on them, e.g. CondInst's); ValueError for any other head."""
    cls_head, reg_head = getattr(head, "classification_head", None), getattr(head, "regression_head", None)
    if cls_head is None or reg_head is None or not hasattr(cls_head, "conv") or not hasattr(reg_head, "conv"):
        raise ValueError(f"{type(head).__name__} is not a dense head with classification and regression towers")
    return {"cls": cls_head.conv, "reg": reg_head.conv}


def tower_depth(head: nn.Module) -> int:
    """n, the layers of each tower of ``head`` (ValueError when the two towers differ)."""
    depths = {len(relu_positions(flat_tower(t))) for t in dense_towers(head).values()}
    if len(depths) != 1:
        raise ValueError(f"the towers of {type(head).__name__} differ in depth: {sorted(depths)}")
    return depths.pop()


def _hold_hook(store: list[Tensor], clone_for_inplace: bool):
    def hook(module: nn.Module, args, output: Tensor):
        store.append(output)
        # An in-place ReLU next would overwrite the held tensor: it gets a copy instead.
        return output.clone() if clone_for_inplace else None
    return hook


def _input_hook(store: list[Tensor]):
    def hook(module: nn.Module, args) -> None:
        store.append(args[0])
    return hook


@contextmanager
def capture_head_holds(head: nn.Module, enabled: bool = True) -> Iterator[HeadHolds | None]:
    """Within the block, every call of ``head``'s towers records its held activations (one
    entry per level, in call order) into the yielded :class:`HeadHolds`; None when not
    ``enabled`` (nothing is hooked)."""
    if not enabled:
        yield None
        return
    holds = HeadHolds()
    handles = []
    try:
        for name, tower in dense_towers(head).items():
            flat = flat_tower(tower)
            stores: list[list[Tensor]] = [[]]
            handles.append(tower.register_forward_pre_hook(_input_hook(stores[0])))
            for position in relu_positions(flat):
                stores.append([])
                inplace = bool(getattr(flat[position], "inplace", False))
                handles.append(flat[position - 1].register_forward_hook(_hold_hook(stores[-1], inplace)))
            setattr(holds, name, stores)
        yield holds
    finally:
        for handle in handles:
            handle.remove()


def _to_locations(x: Tensor, per_anchor: int) -> Tensor:
    """[B, A*D, H, W] -> [B, H*W*A, D] (torchvision's dense-head reshape)."""
    b, _, h, w = x.shape
    return x.view(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)


def head_from(detector: nn.Module, cls_holds: list[Tensor], reg_holds: list[Tensor], k: int) -> dict[str, Tensor]:
    """Run ``detector``'s dense head from tower layer ``k`` on given held tensors.

    Args:
        detector: a RetinaNet / FCOS / CondInst adapter or a frozen teacher wrapping one
            (anything with ``.model.head``).
        cls_holds, reg_holds: per level float Tensor[B, C, H_l, W_l], finest first, shaped as
            this head's layer-``k`` holds (C = the head's width).
        k: 0..n; 0 runs the whole towers.
    Returns:
        ``cls_logits`` float[B, N, K], ``bbox_regression`` float[B, N, 4] (the box coder's
        encoding; FCOS's after its ReLU) and, for FCOS-style heads, ``bbox_ctrness``
        float[B, N, 1]: torchvision's head output layout (N = sum over levels of H_l*W_l*A).
        Computed with autograd on, whatever the caller's mode.
    """
    head = detector.model.head
    depth = tower_depth(head)
    if not 0 <= k <= depth:
        raise ValueError(f"tower layer k must be in 0..{depth}, got {k}")
    towers = dense_towers(head)
    remainders = {}
    for name, tower in towers.items():
        flat = flat_tower(tower)
        if k == 0:
            remainders[name] = nn.Sequential(*flat)
        else:
            # The k-th ReLU out of place: an in-place one (RetinaNet's) would overwrite the
            # caller's tensors.
            remainders[name] = nn.Sequential(nn.ReLU(), *flat[relu_positions(flat)[k - 1] + 1:])
    cls_head, reg_head = head.classification_head, head.regression_head
    outputs: dict[str, list[Tensor]] = {"cls_logits": [], "bbox_regression": []}
    with torch.enable_grad():
        for level in cls_holds:
            outputs["cls_logits"].append(
                _to_locations(cls_head.cls_logits(remainders["cls"](level)), cls_head.num_classes))
        for level in reg_holds:
            tower = remainders["reg"](level)
            if hasattr(reg_head, "bbox_ctrness"):  # FCOS: ReLU'd ltrb distances and centre-ness
                outputs["bbox_regression"].append(_to_locations(torch.relu(reg_head.bbox_reg(tower)), 4))
                outputs.setdefault("bbox_ctrness", []).append(_to_locations(reg_head.bbox_ctrness(tower), 1))
            else:
                outputs["bbox_regression"].append(_to_locations(reg_head.bbox_reg(tower), 4))
    return {name: torch.cat(parts, dim=1) for name, parts in outputs.items()}


__all__ = ["HeadHolds", "capture_head_holds", "dense_towers", "flat_tower", "head_from", "relu_positions", "tower_depth"]
