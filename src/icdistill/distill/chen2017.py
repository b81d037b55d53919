"""Chen et al. 2017, "Learning Efficient Object Detection Models with Knowledge Distillation"
(NeurIPS 2017): hint + class-weighted soft cross-entropy + teacher-bounded regression, on
the RPN and the RoI head (RCN) of a Faster R-CNN.

Per head: L_cls = μ·L_hard + (1 − μ)·L_soft, L_soft = −Σ_c w_c P_t^c log P_s^c with
P = softmax(z / T) and w_background = 1.5; L_reg = smoothL1 + ν·L_b with the bounded term
L_b = ‖R_s − y‖² if ‖R_s − y‖² + m > ‖R_t − y‖² else 0 (per sample, ν = 0.5); plus
γ·L_hint, γ = 0.5.

The hard terms are the detector's own losses (``det/*``, weight 1 in the sum), so the method
returns ``(1 − μ)·(λ·L_soft − L_hard)`` as its ``*_cls`` terms: the total is then exactly
μ·L_hard + λ(1 − μ)·L_soft (λ = ``distill.chen2017.loss_weight`` × ``distill.weight_scale``,
default 1, scales every KD term).

This project's adaptation [ADAPT] to torchvision FPN detectors:

* hint: every distilled FPN level, a per-level 1×1 adapter (used even when widths match, as the
  paper does), MSE averaged over valid positions and channels, mean over levels;
  ``hint_layer: c5`` imitates the backbone's last stage instead (the paper's last shared conv
  map, taken with :class:`~icdistill.detectors.taps.LastStageTap`, stride 32);
* RPN: the student's 256 sampled anchors per image; the teacher's objectness at the same
  anchors; one logit = a 2-class softmax, so L_soft = −[1.5·(1 − p_t) log(1 − p_s) + p_t log p_s],
  averaged over the sampled anchors; bounded regression on the positive ones, summed and
  divided by the sampled count (torchvision's RPN box-loss normaliser);
* RCN: the student's 512 sampled RoIs per image, the teacher's box head on the same RoIs;
  softmax over C+1; bounded regression on the ground-truth class's deltas (weights 10, 10, 5,
  5), summed over positives and divided by the RoI count (``fastrcnn_loss``'s normaliser);
* RetinaNet / FCOS (no paper form): L_soft = Σ over anchors and classes 1..C of the binary
  soft cross-entropy between σ(z_s/T) and σ(z_t/T), reported minus the teacher's entropy (the
  KL: same gradient, 0 when the two agree), anchors weighted 1 when the detector's own matcher
  (:func:`icdistill.detectors.assign.assign`) makes them foreground, 1.5 background, 0 ignored,
  divided by the foreground count; μ blends it with the focal loss; bounded regression on the
  foreground anchors in the head's own encoding, divided by the foreground count.

During the distillation warm-up (the student's features reach the method detached) only the
hint is returned: the adapters train, the student's heads are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from icdistill.config import choice, require_at_most_one, require_number
from icdistill.detectors.assign import assign
from icdistill.detectors.extras import DENSE, ROI_SAMPLES, RPN, DenseOutputs
from icdistill.detectors.families import family_facts
from icdistill.detectors.taps import LastStageTap
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import STUDENT, TEACHER, DistillInputs, valid_token_mask
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._parts import LevelAdapters, check_same_kind
from icdistill.distill.methods.fitnet import full_map_imitation_loss
from icdistill.errors import ConfigError, ModelMismatchError

HINT_LAYERS = ("fpn", "c5")


@dataclass(frozen=True)
class Chen2017Config:
    """``distill.chen2017``. ``mu``: the hard loss's share (μ; unverified default);
    ``temperature`` T; ``margin`` m of the bounded regression; ``nu`` ν: its weight;
    ``hint_weight`` γ; ``bg_weight``: the background class's weight in the soft cross-entropy;
    ``hint_layer``: ``fpn`` (every distilled FPN level) or ``c5`` (the backbone's last stage,
    the paper's); ``loss_weight`` λ on every KD term (default 1). The FPN hint and the
    one-stage form are this project's adaptation [ADAPT]."""

    mu: float = 0.5
    temperature: float = 1.0
    margin: float = 0.0
    nu: float = 0.5
    hint_weight: float = 0.5
    bg_weight: float = 1.5
    hint_layer: str = choice("fpn", HINT_LAYERS)
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        require_number("distill.chen2017", "temperature", self.temperature, positive=True)
        for name in ("mu", "margin", "nu", "hint_weight", "bg_weight", "loss_weight"):
            require_number("distill.chen2017", name, getattr(self, name))
        require_at_most_one("distill.chen2017", "mu", self.mu)


def bounded_regression(r_s: Tensor, r_t: Tensor, y: Tensor, margin: float = 0.0) -> Tensor:
    """Per sample L_b = ‖R_s − y‖² if ‖R_s − y‖² + m > ‖R_t − y‖², else 0.

    Args: r_s, r_t, y float[P, 4] (student, teacher, target in one encoding). Returns float[P]."""
    err_s = (r_s - y).pow(2).sum(dim=-1)
    err_t = (r_t.detach() - y).pow(2).sum(dim=-1)
    return err_s * (err_s + margin > err_t).to(err_s.dtype)


def weighted_soft_ce(z_s: Tensor, z_t: Tensor, class_weights: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over rows of −Σ_c w_c·softmax(z_t/T)_c·log softmax(z_s/T)_c.

    Args: z_s, z_t float[R, K] logits; class_weights float[K]. Returns a scalar (0 for R = 0)."""
    if z_s.shape[0] == 0:
        return z_s.sum() * 0.0
    p_t = F.softmax(z_t.detach() / temperature, dim=-1)
    return -(class_weights * p_t * F.log_softmax(z_s / temperature, dim=-1)).sum(dim=-1).mean()


def binary_soft_ce(z_s: Tensor, z_t: Tensor, bg_weight: float = 1.5, temperature: float = 1.0) -> Tensor:
    """The RPN's two-class form, mean over samples of
    −[w_bg·(1 − p_t)·log(1 − p_s) + p_t·log p_s] with p = σ(z/T). Args: float[M] logits."""
    if z_s.numel() == 0:
        return z_s.sum() * 0.0
    p_t = torch.sigmoid(z_t.detach() / temperature)
    zs = z_s / temperature
    return -(bg_weight * (1 - p_t) * F.logsigmoid(-zs) + p_t * F.logsigmoid(zs)).mean()


def sigmoid_soft_kl(z_s: Tensor, z_t: Tensor, temperature: float = 1.0) -> Tensor:
    """Elementwise binary soft cross-entropy of σ(z_s/T) against σ(z_t/T) minus the teacher's
    entropy (the binary KL), float[...] like the inputs."""
    zs, zt = z_s / temperature, z_t.detach() / temperature
    p_t = torch.sigmoid(zt)
    return (F.binary_cross_entropy_with_logits(zs, p_t, reduction="none")
            - F.binary_cross_entropy_with_logits(zt, p_t, reduction="none"))


class Chen2017(DistillMethod):
    """``distill.method: chen2017``.

    Args:
        two_stage: Faster R-CNN / Mask R-CNN (native) or RetinaNet / FCOS ([ADAPT]).
        student_channels, teacher_channels, num_levels: the hint adapters (one 1×1 per level).
        mu, temperature, margin, nu, hint_weight, bg_weight: μ, T, m, ν, γ, w_background.
        taps: (teacher, student) :class:`LastStageTap` for the C5 hint (then the channel
            arguments are the C5 widths and ``num_levels`` is 1); None: the FPN levels.
        loss_weight: λ on every KD term (default 1).
        optim: the adapters' optimisation (the student's SGD, as the originals train adapters).
    """

    name = "chen2017"

    def __init__(
        self, *, two_stage: bool, student_channels: int, teacher_channels: int, num_levels: int,
        mu: float = 0.5, temperature: float = 1.0, margin: float = 0.0, nu: float = 0.5,
        hint_weight: float = 0.5, bg_weight: float = 1.5, loss_weight: float = 1.0,
        optim: MethodOptim = MethodOptim(kind="student"), taps: tuple[LastStageTap, LastStageTap] | None = None,
    ) -> None:
        super().__init__(optim)
        self.taps = taps
        self.adapters = LevelAdapters("1x1", student_channels, teacher_channels, num_levels)
        self.two_stage = two_stage
        self.mu, self.temperature, self.margin, self.nu = mu, temperature, margin, nu
        self.hint_weight, self.bg_weight, self.loss_weight = hint_weight, bg_weight, loss_weight
        self.requires = frozenset({RPN, ROI_SAMPLES} if two_stage else {DENSE})

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """``distill/chen2017/{hint, rpn_cls, rpn_reg, rcn_cls, rcn_reg}`` (two-stage) or
        ``{hint, cls, reg}`` (one-stage); only ``hint`` in the warm-up; {} without a student."""
        if not inputs.has_student:
            return {}
        out = {"hint": self.loss_weight * self.hint_weight * self.hint(inputs)}
        if not inputs.detach_student:
            out.update(self.two_stage_terms(inputs) if self.two_stage else self.one_stage_terms(inputs))
        return {f"distill/chen2017/{k}": v for k, v in out.items()}

    def hint(self, inputs: DistillInputs) -> Tensor:
        """L_hint: MSE over valid positions and channels of the adapted student map(s) against
        the teacher's (FPN levels, mean over levels; or C5 at stride 32)."""
        if self.taps is None:
            adapted = self.adapters(inputs.student_levels)
            return full_map_imitation_loss(inputs.teacher_levels, adapted, inputs.valid_masks)
        teacher, student = (tap.value for tap in self.taps)
        if teacher is None or student is None:
            raise RuntimeError("the C5 hint's taps saw no forward pass of both detectors")
        student = student.detach() if inputs.detach_student else student
        valid = valid_token_mask([tuple(teacher.shape[-2:])], [32], inputs.image_sizes, teacher.device)
        return full_map_imitation_loss([teacher.detach()], self.adapters([student]), valid)

    def _hard(self, inputs: DistillInputs, name: str) -> Tensor:
        if inputs.student_losses is None or name not in inputs.student_losses:
            raise ValueError(f"chen2017 reweights the student's {name!r} loss, which the inputs do not carry")
        return inputs.student_losses[name]

    def _blend(self, soft: Tensor, hard: Tensor) -> Tensor:
        """(1 − μ)·(λ·soft − hard): added to the detector's hard loss it gives μ·hard + λ(1 − μ)·soft."""
        return (1.0 - self.mu) * (self.loss_weight * soft - hard)

    def two_stage_terms(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """RPN and RCN terms on the student's sampled anchors and RoIs."""
        s_rpn, t_rpn = inputs.extra(STUDENT, RPN), inputs.extra(TEACHER, RPN)
        pos, neg = torch.cat(s_rpn.sampled_positive), torch.cat(s_rpn.sampled_negative)
        sampled = pos | neg
        soft = binary_soft_ce(s_rpn.objectness.flatten()[sampled], t_rpn.objectness.flatten()[sampled],
                              self.bg_weight, self.temperature)
        bounded = bounded_regression(s_rpn.deltas.reshape(-1, 4)[pos], t_rpn.deltas.reshape(-1, 4)[pos],
                                     torch.cat(s_rpn.regression_targets)[pos], self.margin)
        out = {"rpn_cls": self._blend(soft, self._hard(inputs, "loss_objectness")),
               "rpn_reg": self.loss_weight * self.nu * bounded.sum() / sampled.sum().clamp_min(1)}

        roi = inputs.extra(STUDENT, ROI_SAMPLES)
        t_cls, t_reg = inputs.box_head(TEACHER, roi.boxes)
        labels = torch.cat(roi.labels)
        weights = torch.ones(t_cls.shape[1], device=t_cls.device)
        weights[0] = self.bg_weight  # column 0 is background in torchvision's softmax head
        soft = weighted_soft_ce(roi.class_logits, t_cls, weights, self.temperature)
        idx = torch.where(labels > 0)[0]
        rows = labels.shape[0]
        s_box = roi.box_regression.reshape(rows, -1, 4)[idx, labels[idx]]
        t_box = t_reg.reshape(rows, -1, 4)[idx, labels[idx]]
        bounded = bounded_regression(s_box, t_box, torch.cat(roi.regression_targets)[idx], self.margin)
        out["rcn_cls"] = self._blend(soft, self._hard(inputs, "loss_classifier"))
        out["rcn_reg"] = self.loss_weight * self.nu * bounded.sum() / max(1, rows)
        return out

    def one_stage_terms(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """[ADAPT] soft BCE (KL form) and bounded regression over the dense head's anchors."""
        s, t = inputs.extra(STUDENT, DENSE), inputs.extra(TEACHER, DENSE)
        if s.cls_logits.shape != t.cls_logits.shape:
            raise ModelMismatchError(
                f"chen2017 compares the dense heads anchor by anchor, but the student has "
                f"{tuple(s.cls_logits.shape)} outputs and the teacher {tuple(t.cls_logits.shape)} "
                "(same family, anchors and classes needed)"
            )
        boxes = [target["boxes"].reshape(-1, 4).float() for target in inputs.targets]
        matched = torch.stack(assign(inputs.student, s.anchors, s.num_anchors_per_level, boxes))  # [B, N]
        fg, bg = matched >= 0, matched == -1
        num_fg = fg.sum().clamp_min(1)
        anchor_weight = fg.to(s.cls_logits.dtype) + self.bg_weight * bg.to(s.cls_logits.dtype)
        kl = sigmoid_soft_kl(s.cls_logits[..., 1:], t.cls_logits[..., 1:], self.temperature).sum(dim=-1)
        soft = (kl * anchor_weight).sum() / num_fg
        targets = encode_matched(s, boxes, matched)
        bounded = bounded_regression(s.bbox_regression[fg], t.bbox_regression[fg], targets, self.margin)
        return {"cls": self._blend(soft, self._hard(inputs, "classification")),
                "reg": self.loss_weight * self.nu * bounded.sum() / num_fg}


def encode_matched(dense: DenseOutputs, boxes: Sequence[Tensor], matched: Tensor) -> Tensor:
    """The regression targets of the foreground anchors (``matched`` ≥ 0), images concatenated,
    in the head's own encoding (RetinaNet deltas, FCOS normalised ltrb): float[P, 4]."""
    out = []
    for b, (anchors, gt) in enumerate(zip(dense.anchors, boxes)):
        fg = matched[b] >= 0
        if not fg.any():
            continue
        gt_boxes, fg_anchors = gt.to(anchors)[matched[b][fg]], anchors[fg]
        coder = dense.box_coder
        if hasattr(coder, "encode_single"):  # RetinaNet's BoxCoder: encode_single(gt, anchors)
            out.append(coder.encode_single(gt_boxes, fg_anchors))
        else:  # FCOS's BoxLinearCoder: encode(anchors, gt)
            out.append(coder.encode(fg_anchors, gt_boxes))
    return torch.cat(out) if out else dense.bbox_regression.new_zeros((0, 4))


def build_chen2017(cfg: Chen2017Config, ctx: MethodContext) -> Chen2017:
    """Chen et al. 2017 from ``distill.chen2017``. The heads are compared output by output:
    both detectors of one kind, and of one family on one-stage detectors."""
    family = ctx.student.family
    check_same_kind("chen2017", ctx.teacher.family, family)
    two_stage = family_facts(family).two_stage
    if not two_stage and ctx.teacher.family != family:
        raise ConfigError(
            f"distill.method 'chen2017' on one-stage detectors compares the heads anchor by anchor: the "
            f"teacher must be a {family} too, got {ctx.teacher.family}"
        )
    taps = (LastStageTap(ctx.teacher), LastStageTap(ctx.student)) if cfg.hint_layer == "c5" else None
    widths = (taps[1].channels, taps[0].channels) if taps else (ctx.student.out_channels, ctx.teacher.out_channels)
    return Chen2017(
        two_stage=two_stage, student_channels=widths[0], teacher_channels=widths[1],
        num_levels=1 if taps else len(ctx.levels), taps=taps, mu=cfg.mu,
        temperature=cfg.temperature, margin=cfg.margin, nu=cfg.nu, hint_weight=cfg.hint_weight,
        bg_weight=cfg.bg_weight, loss_weight=cfg.loss_weight * ctx.weight_scale, optim=MethodOptim(kind=STUDENT_SGD),
    )


SPEC = register_method(MethodSpec(
    name="chen2017", section=Chen2017Config, build=build_chen2017,
    # Two-stage: the RPN's outputs and the sampled RoIs (plus the box-head call every two-stage
    # adapter has); one-stage: the dense head's outputs.
    needs={ONE_STAGE: frozenset({DENSE}), TWO_STAGE: frozenset({RPN, ROI_SAMPLES})},
    native=frozenset({"faster_rcnn", "mask_rcnn"}),
    paper="Chen et al., Learning Efficient Object Detection Models with Knowledge Distillation, NeurIPS 2017",
))
