"""The one table of facts about each detector family.

Every builder, default, benchmark and doc table reads the family facts from here; nothing else
repeats them (``docs/architecture.md``'s family table is tested against this one).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .backbones import P2_P6, P3_P7, LevelSpec
from .resnet_trunks import C4, DC5


@dataclass(frozen=True)
class FamilyFacts:
    """What the rest of the toolkit needs to know about one detector family.

    Attributes:
        name: the ``model.family`` value.
        levels: the feature pyramid (names and strides of what ``features`` returns).
        two_stage: an RPN + RoI-head detector (proposals, sampled RoIs, a box head).
        masks: predicts instance masks (training targets need ``masks``; ``segm`` AP).
        reference_lr: the student's SGD LR at 16 images per batch (detectron2's 1x schedules:
            0.01 one-stage, 0.02 two-stage).

    A distillation method's own per-family defaults live with the method
    (``icdistill.distill``), not here.
    """

    name: str
    levels: LevelSpec
    two_stage: bool
    masks: bool
    reference_lr: float


FAMILY_TABLE: dict[str, FamilyFacts] = {
    f.name: f
    for f in (
        FamilyFacts("retinanet", P3_P7, two_stage=False, masks=False, reference_lr=0.01),
        FamilyFacts("fcos", P3_P7, two_stage=False, masks=False, reference_lr=0.01),
        FamilyFacts("faster_rcnn", P2_P6, two_stage=True, masks=False, reference_lr=0.02),
        FamilyFacts("mask_rcnn", P2_P6, two_stage=True, masks=True, reference_lr=0.02),
        # FPN-free Faster R-CNN (appendix Table 10): Faster R-CNN's settings on the one map.
        FamilyFacts("faster_rcnn_c4", C4, two_stage=True, masks=False, reference_lr=0.02),
        FamilyFacts("faster_rcnn_dc5", DC5, two_stage=True, masks=False, reference_lr=0.02),
        # Cascade (Mask) R-CNN (Table 9's teacher): Faster R-CNN's pyramid and settings.
        FamilyFacts("cascade_rcnn", P2_P6, two_stage=True, masks=False, reference_lr=0.02),
        FamilyFacts("cascade_mask_rcnn", P2_P6, two_stage=True, masks=True, reference_lr=0.02),
        # CondInst (Table 8): FCOS plus dynamic mask heads, FCOS's pyramid and settings.
        FamilyFacts("condinst", P3_P7, two_stage=False, masks=True, reference_lr=0.01),
    )
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_TABLE)


def family_facts(name: str) -> FamilyFacts:
    """The facts of family ``name``; ConfigError naming the valid families otherwise."""
    if name not in FAMILY_TABLE:
        raise ConfigError(f"unknown detector family {name!r}; valid families: {', '.join(FAMILY_TABLE)}")
    return FAMILY_TABLE[name]


def family_table_markdown() -> str:
    """The family table as it appears in ``docs/architecture.md``."""
    rows = [
        "| family | levels (strides) | stages | masks | reference LR @16 |",
        "|---|---|---|---|---|",
    ]
    for f in FAMILY_TABLE.values():
        levels = ", ".join(f"{n} ({s})" for n, s in zip(f.levels.names, f.levels.strides))
        rows.append(
            f"| `{f.name}` | {levels} | {'two' if f.two_stage else 'one'} | {'yes' if f.masks else 'no'} "
            f"| {f.reference_lr:g} |"
        )
    return "\n".join(rows)
