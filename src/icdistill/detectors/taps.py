"""``LastStageTap``: the backbone's last stage (C5) of a detector's most recent ``features`` call.

An FPN detector hands a distillation method its pyramid; a few methods imitate the backbone
itself (Chen et al. 2017's hint layer, ``distill.chen2017.hint_layer: c5``). A forward hook on
the FPN backbone's body keeps its last output, so the map comes from the same forward pass as the
pyramid — no second backbone run.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .base import DetectorAdapter


class LastStageTap:
    """Keeps ``adapter.model.backbone.body``'s last output (float Tensor[B, C5, ⌈Hp/32⌉, ⌈Wp/32⌉])
    after every forward through it.

    Args:
        adapter: an FPN detector adapter or frozen teacher (``model.backbone`` is a torchvision
            ``BackboneWithFPN``).
    Raises:
        ValueError: the detector has no FPN backbone body.
    """

    def __init__(self, adapter: DetectorAdapter) -> None:
        backbone = getattr(adapter.model, "backbone", None)
        if not hasattr(backbone, "body") or not hasattr(backbone, "fpn"):
            raise ValueError(f"the {adapter.family} detector has no FPN backbone body to tap")
        self.channels = int(backbone.fpn.inner_blocks[-1][0].in_channels)
        self.value: Tensor | None = None
        self._handle = backbone.body.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: "dict[str, Tensor]") -> None:
        self.value = list(output.values())[-1]

    def remove(self) -> None:
        """Detach the hook."""
        self._handle.remove()
