"""The pyramid layouts a detector family exposes, as plain data (no torch: the config reads the
family table, which names them, without loading torch).

* ``P3_P7`` (RetinaNet, FCOS, CondInst): body stages at strides 8, 16, 32 -> FPN keys
  ``'0','1','2'`` plus ``'p6','p7'`` computed from P5; exposed as ``p3..p7``, strides 8..128.
* ``P2_P6`` (Faster / Mask / Cascade R-CNN): body stages at strides 4, 8, 16, 32 -> FPN keys
  ``'0'..'3'`` plus ``'pool'``; exposed as ``p2..p6``, strides 4..64.
* ``C4`` / ``DC5`` (FPN-free Faster R-CNN): one map at stride 16, named as torchvision's key.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LevelSpec:
    """A pyramid layout.

    Attributes:
        names: public level names, finest first (what ``DetectorAdapter.features`` returns).
        strides: nominal stride in pixels of each level.
        fpn_keys: the keys torchvision's ``BackboneWithFPN`` produces for the same levels.
        body_strides: strides of the body stages fed into the FPN.
    """

    names: tuple[str, ...]
    strides: tuple[int, ...]
    fpn_keys: tuple[str, ...]
    body_strides: tuple[int, ...]

    @property
    def max_pool_extra_level(self) -> bool:
        """The FPN's extra level is a max pool of the last (``'pool'``), not P6/P7 convolutions."""
        return self.fpn_keys[-1] == "pool"


P3_P7 = LevelSpec(
    names=("p3", "p4", "p5", "p6", "p7"),
    strides=(8, 16, 32, 64, 128),
    fpn_keys=("0", "1", "2", "p6", "p7"),
    body_strides=(8, 16, 32),
)
P2_P6 = LevelSpec(
    names=("p2", "p3", "p4", "p5", "p6"),
    strides=(4, 8, 16, 32, 64),
    fpn_keys=("0", "1", "2", "3", "pool"),
    body_strides=(4, 8, 16, 32),
)
C4 = LevelSpec(names=("c4",), strides=(16,), fpn_keys=("c4",), body_strides=(16,))
DC5 = LevelSpec(names=("c5",), strides=(16,), fpn_keys=("c5",), body_strides=(16,))
