"""ICD's config section ``distill.icd``, its per-family defaults, its builder and its
registration (Kang et al., "Instance-Conditional Knowledge Distillation for Object Detection",
NeurIPS 2021; docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from icdistill.config import choice, require_number
from icdistill.data.prior import DatasetPrior
from icdistill.detectors.families import FAMILIES, family_facts
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.method import MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.icd.ablation import ABLATION_WEIGHTS
from icdistill.distill.icd.module import ICDModule
from icdistill.distill.icd.sampling import PriorTensors


@dataclass(frozen=True)
class ICDFamilyDefaults:
    """What ``distill.icd`` null means on one family.

    Attributes:
        loss_weight: λ of the distillation loss.
        max_instances: the cap on instance slots per image.
    """

    loss_weight: float
    max_instances: int


# λ: the paper's Table 12 (RetinaNet 6, Faster R-CNN 3) and the release's FCOS config (8);
# instance cap: 300 per image for one-stage detectors, 100 for two-stage (the release's).
# Families the paper's appendix adds (Tables 8-10) take the defaults of the family they extend.
KIND_DEFAULTS = {ONE_STAGE: ICDFamilyDefaults(6.0, 300), TWO_STAGE: ICDFamilyDefaults(3.0, 100)}
FAMILY_DEFAULTS: dict[str, ICDFamilyDefaults] = {
    "fcos": ICDFamilyDefaults(8.0, 300),
    "condinst": ICDFamilyDefaults(8.0, 300),  # FCOS plus dynamic mask heads
}


def family_defaults(family: str) -> ICDFamilyDefaults:
    """ICD's λ and instance cap on ``family`` (ConfigError for an unknown family)."""
    kind = TWO_STAGE if family_facts(family).two_stage else ONE_STAGE
    return FAMILY_DEFAULTS.get(family, KIND_DEFAULTS[kind])


@dataclass(frozen=True)
class ICDConfig:
    """``distill.icd``. Nulls take the student family's defaults (:func:`family_defaults`):
    ``loss_weight`` λ 6 RetinaNet, 8 FCOS / CondInst, 3 two-stage; ``max_instances`` 300
    one-stage, 100 two-stage. ``hidden_dim``, ``num_heads``, ``num_layers``: the decoder;
    ``fake_ratio``: fake instances per real one; ``jitter``: the auxiliary task's box jitter.

    The defaults are the paper's design, until a validation comparison on the student resolves
    another better (docs/method.md, "Choosing ICD's defaults"). ``position_prior`` (this
    project's design [ADAPT], off by default; false is the paper's decoder) adds the query's
    position to the attention logits, a kernel of fixed per-head width ``position_scale``;
    ``decoder_warmup_iters`` iterations train the decoder alone before the main stage, at
    ``decoder_warmup_lr`` (null: ``distill.lr``, the paper's); ``diagnostic_images`` test
    images give the ``icd/*`` diagnostics at every evaluation. ``ablation_weights`` (an
    ablation switch of this project, not a method; null is ICD) weights the distillation loss
    with ``uniform`` weights over valid tokens or a ``gt_box`` mask instead of the decoder's
    attention."""

    loss_weight: Optional[float] = None
    hidden_dim: int = 256
    num_heads: int = 8
    num_layers: int = 1
    fake_ratio: int = 5
    max_instances: Optional[int] = None
    jitter: float = 0.3
    decoder_warmup_iters: int = 0
    decoder_warmup_lr: Optional[float] = None
    position_prior: bool = False
    position_scale: float = 64.0
    diagnostic_images: int = 32
    ablation_weights: Optional[str] = choice(None, ABLATION_WEIGHTS)

    def __post_init__(self) -> None:
        require_number("distill.icd", "loss_weight", self.loss_weight)
        for name in ("hidden_dim", "num_heads", "num_layers", "max_instances"):
            require_number("distill.icd", name, getattr(self, name), positive=True)


def prior_tensors(prior: DatasetPrior) -> PriorTensors:
    """The dataset prior as float32 tensors of shape [C] each."""
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return PriorTensors(t(prior.freq), t(prior.w_mean), t(prior.w_std), t(prior.h_mean), t(prior.h_std))


def build_icd(cfg: ICDConfig, ctx: MethodContext) -> ICDModule:
    """ICD from ``distill.icd``; λ and the instance cap default to the student family's."""
    defaults = family_defaults(ctx.student.family)
    loss_weight = cfg.loss_weight if cfg.loss_weight is not None else defaults.loss_weight
    return ICDModule(
        num_classes=ctx.num_classes, teacher_channels=ctx.teacher.out_channels,
        student_channels=ctx.student.out_channels, prior=prior_tensors(ctx.prior),
        hidden_dim=cfg.hidden_dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers, fake_ratio=cfg.fake_ratio,
        max_instances=cfg.max_instances or defaults.max_instances, jitter=cfg.jitter,
        loss_weight=loss_weight * ctx.weight_scale,
        optim=MethodOptim(lr=ctx.own_optim.lr, weight_decay=ctx.own_optim.weight_decay,
                          clip_norm=ctx.own_optim.clip_norm, stage_lr=cfg.decoder_warmup_lr),
        method_only_iters=cfg.decoder_warmup_iters, position_prior=cfg.position_prior,
        position_scale=cfg.position_scale, diagnostic_images=cfg.diagnostic_images,
        ablation_weights=cfg.ablation_weights, seed=ctx.seed,
    )


SPEC = register_method(MethodSpec(
    name="icd", section=ICDConfig, build=build_icd,
    # Features, targets and image sizes only: every kind of detector, no extras.
    needs={ONE_STAGE: frozenset(), TWO_STAGE: frozenset()},
    # The paper's main tables and its appendix (Tables 8-10: CondInst, Cascade, C4 / DC5).
    native=frozenset(FAMILIES),
    paper="Kang et al., Instance-Conditional Knowledge Distillation for Object Detection, NeurIPS 2021",
    # The release's BYPASS_DISTILL: 1000 iterations before the distillation loss counts.
    warmup_iters=1000,
    former_keys=("hidden_dim", "num_heads", "num_layers", "fake_ratio", "max_instances", "jitter",
                 "decoder_warmup_iters", "decoder_warmup_lr", "position_prior", "position_scale",
                 "diagnostic_images", "ablation_weights"),
))
