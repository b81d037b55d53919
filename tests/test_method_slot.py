"""The one slot every distillation method fills (``DistillMethod`` + ``DistillInputs`` + extras).

A method declares the detector extras it needs, reads them from one lazily filled
``DistillInputs`` and returns losses ``distill/<name>/<term>``; the student's extras come from
its one training forward, the teacher's are computed on first read. These tests plug small
probe methods into the real ``Distiller`` with tiny real detectors, and check the registry,
the optimiser placement and the two shipped methods (ICD, FitNet).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.image_list import ImageList

from icdistill.config import DistillConfig, distill_config, load_config
from icdistill.data.prior import DatasetPrior
from icdistill.detectors import build_detector, freeze_as_teacher
from icdistill.detectors.backbones import fpn_levels
from icdistill.detectors.extras import DenseOutputs, RoISamples, RPNOutputs
from icdistill.distill.build import NO_METHOD, build_distiller, build_method
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core import registry
from icdistill.distill.core.registry import method_names
from icdistill.distill.core.distiller import Distiller
from icdistill.distill.core.inputs import DistillInputs
from icdistill.distill.core.method import DistillMethod, MethodOptim
from icdistill.engine.distributed import DistContext
from icdistill.engine.step import StepContext, build_optimisers, train_step
from icdistill.errors import ConfigError
from icdistill.structures import collate_batch

NUM_CLASSES = 3
SIZES = [(64, 96), (60, 70)]
TARGETS = [
    {"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([0])},
    {"boxes": torch.tensor([[10.0, 10, 30, 50], [40, 5, 60, 25]]), "labels": torch.tensor([1, 2])},
]
# Per-image boxes handed to box_head / roi_align (R = 3 in all).
QUERY_BOXES = [torch.tensor([[4.0, 4, 40, 30], [0, 0, 20, 20]]), torch.tensor([[10.0, 10, 30, 50]])]


def tiny(family: str = "retinanet", width: int = 32):
    return build_detector(family, backbone="resnet18", num_classes=NUM_CLASSES, fpn_channels=width,
                          anchor_sizes=(16, 32, 64, 128, 256))


def make_probe(requires, body=None, *, optim: MethodOptim = MethodOptim(), method_only_iters: int = 0):
    """A ``probe`` method declaring ``requires``; it keeps every DistillInputs it is given and
    returns ``body(method, inputs)`` (default: one zero loss on its parameter)."""

    class Probe(DistillMethod):
        name = "probe"

        def __init__(self) -> None:
            super().__init__(optim, method_only_iters=method_only_iters)
            self.scale = nn.Parameter(torch.ones(()))
            self.seen: list[DistillInputs] = []

        def forward(self, inputs: DistillInputs):
            self.seen.append(inputs)
            if body is not None:
                return body(self, inputs)
            return {"distill/probe/zero": self.scale * 0.0}

    Probe.requires = frozenset(requires)
    return Probe()


def count_calls(monkeypatch, obj, attr: str) -> list:
    """Wrap ``obj.attr`` so every call's return value is appended to the returned list."""
    calls: list = []
    original = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(obj, attr, wrapper)
    return calls


def record_kwargs(monkeypatch, obj, attr: str) -> list[dict]:
    """Wrap ``obj.attr`` so the keyword arguments of every call are recorded."""
    seen: list[dict] = []
    original = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, attr, wrapper)
    return seen


def distiller_for(student, method, **kw) -> Distiller:
    return Distiller(student, method, levels=student.level_names, strides=student.strides, **kw).train()


def level_locations(features) -> list[int]:
    return [f.shape[-2] * f.shape[-1] for f in features.values()]


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 96)


@pytest.fixture(scope="module")
def retina():
    """A frozen RetinaNet teacher (FPN 48) and a RetinaNet student (FPN 32)."""
    torch.manual_seed(0)
    return freeze_as_teacher(tiny("retinanet", 48)), tiny("retinanet", 32)


@pytest.fixture(scope="module")
def frcnn():
    """A frozen Faster R-CNN teacher (FPN 48) and a Faster R-CNN student (FPN 32)."""
    torch.manual_seed(0)
    return freeze_as_teacher(tiny("faster_rcnn", 48)), tiny("faster_rcnn", 32)


@pytest.fixture(scope="module")
def prior():
    return DatasetPrior(names=["a", "b", "c"], freq=[2.0, 1.0, 1.0], w_mean=[0.2] * 3, w_std=[0.05] * 3,
                        h_mean=[0.2] * 3, h_std=[0.05] * 3, num_images=10)


# ---- 1. the probe method on RetinaNet ---------------------------------------------------------


def test_student_extras_come_from_the_one_training_forward(retina, images, monkeypatch):
    """Per step the student runs features and its head exactly once, and the method's student
    ``dense``/``anchors`` extras ARE that pass's head outputs (same tensors, in the graph); only
    the declared extras are asked of ``forward_train``; the teacher's head is never run when the
    method does not read a teacher extra."""
    teacher, student = retina
    probe = make_probe({"dense", "anchors"})
    distiller = distiller_for(student, probe)
    features = count_calls(monkeypatch, student, "features")
    heads = count_calls(monkeypatch, student.model.head, "forward")
    teacher_heads = count_calls(monkeypatch, teacher.model.head, "forward")
    teacher_extras = count_calls(monkeypatch, teacher.adapter, "extras")
    train_kwargs = record_kwargs(monkeypatch, student, "forward_train")
    for step in (1, 2):
        losses = distiller(images, SIZES, TARGETS, teacher, iteration=step)
        assert len(features) == step and len(heads) == step, "a second student forward ran"
        inputs = probe.seen[-1]
        assert inputs.all_student_features is features[-1]
        dense = inputs.extra("student", "dense")
        assert isinstance(dense, DenseOutputs)
        assert dense.cls_logits is heads[-1]["cls_logits"]
        assert dense.bbox_regression is heads[-1]["bbox_regression"]
        assert dense.cls_logits.grad_fn is not None
        anchors = inputs.extra("student", "anchors")
        assert all(torch.equal(a, b) for a, b in zip(anchors, dense.anchors))
        assert set(train_kwargs[-1]["extras"]) == {"dense", "anchors"}
        assert {"det/classification", "det/bbox_regression", "distill/probe/zero"} <= set(losses)
    assert teacher_heads == [] and teacher_extras == [], "teacher extras computed without being read"


def test_teacher_extras_are_lazy_cached_and_ordinary_tensors(retina, images, monkeypatch):
    """A teacher extra is computed on first read only, once per step (a second read is the
    cached object); its tensors are not inference tensors and carry no grad, so a loss that
    saves them for backward (student x teacher logits) backpropagates to the student."""
    teacher, student = retina

    def body(method, inputs):
        t = inputs.extra("teacher", "dense")
        s = inputs.extra("student", "dense")
        return {"distill/probe/logits": method.scale * (s.cls_logits * t.cls_logits).mean()}

    probe = make_probe({"dense"}, body)
    distiller = distiller_for(student, probe)
    teacher_heads = count_calls(monkeypatch, teacher.model.head, "forward")
    losses = distiller(images, SIZES, TARGETS, teacher, iteration=1)
    assert len(teacher_heads) == 1
    inputs = probe.seen[-1]
    dense_t = inputs.extra("teacher", "dense")
    assert inputs.extra("teacher", "dense") is dense_t and len(teacher_heads) == 1, "not cached"
    for t in (dense_t.cls_logits, dense_t.bbox_regression, *dense_t.anchors):
        assert not t.is_inference() and not t.requires_grad
    cls_weight = student.model.head.classification_head.cls_logits.weight
    (grad,) = torch.autograd.grad(losses["distill/probe/logits"], [cls_weight])
    assert grad.abs().sum() > 0


def test_dense_extras_shapes_and_decode_for_both_roles(retina, images):
    """RetinaNet dense extras, student and teacher: cls_logits [B, N, C+1], bbox_regression
    [B, N, 4], no ctrness, anchors per image [N, 4] (= the ``anchors`` extra), N split per level
    as A·H·W finest first; ``decode()`` gives [B, N, 4] and zero deltas decode to the anchors."""
    teacher, student = retina
    probe = make_probe({"dense", "anchors"})
    distiller_for(student, probe)(images, SIZES, TARGETS, teacher, iteration=1)
    inputs = probe.seen[-1]
    per_location = student.model.anchor_generator.num_anchors_per_location()[0]  # 3 scales x 3 ratios
    assert per_location == 9
    expected_levels = [per_location * hw for hw in level_locations(inputs.all_student_features)]
    n = sum(expected_levels)
    for role in ("student", "teacher"):
        dense = inputs.extra(role, "dense")
        assert dense.cls_logits.shape == (2, n, NUM_CLASSES + 1)
        assert dense.bbox_regression.shape == (2, n, 4)
        assert dense.ctrness is None
        assert len(dense.anchors) == 2 and all(a.shape == (n, 4) for a in dense.anchors)
        assert dense.num_anchors_per_level == expected_levels and sum(dense.num_anchors_per_level) == n
        anchors = inputs.extra(role, "anchors")
        assert all(torch.equal(a, b) for a, b in zip(anchors, dense.anchors))
        boxes = dense.decode()
        assert boxes.shape == (2, n, 4) and torch.isfinite(boxes).all()
        zero = dataclasses.replace(dense, bbox_regression=torch.zeros_like(dense.bbox_regression)).decode()
        torch.testing.assert_close(zero, torch.stack(dense.anchors), atol=1e-4, rtol=0)


def test_undeclared_student_extra_is_a_key_error_naming_it(retina, images):
    """A student extra not in ``requires`` was never captured: reading it is a KeyError that
    names it (the teacher's side stays computable on demand)."""
    teacher, student = retina
    probe = make_probe({"dense"})
    distiller_for(student, probe)(images, SIZES, TARGETS, teacher, iteration=1)
    inputs = probe.seen[-1]
    with pytest.raises(KeyError, match="'anchors'"):
        inputs.extra("student", "anchors")
    with pytest.raises(KeyError, match="'roi_samples'"):
        inputs.extra("student", "roi_samples")
    assert len(inputs.extra("teacher", "anchors")) == 2
    with pytest.raises(ValueError, match="role"):
        inputs.extra("coach", "dense")


def test_one_stage_has_no_box_head_and_no_rpn(retina, images):
    """RetinaNet: ``box_head`` is a ValueError for both roles; the ``rpn`` extra is a ValueError
    naming the family, both from the teacher and when a method requires it of the student."""
    teacher, student = retina
    probe = make_probe(set())
    distiller_for(student, probe)(images, SIZES, TARGETS, teacher, iteration=1)
    inputs = probe.seen[-1]
    for role in ("student", "teacher"):
        with pytest.raises(ValueError, match="retinanet"):
            inputs.box_head(role, QUERY_BOXES)
    with pytest.raises(ValueError, match=r"retinanet.*rpn"):
        inputs.extra("teacher", "rpn")
    with pytest.raises(ValueError, match=r"retinanet.*rpn"):
        distiller_for(student, make_probe({"rpn"}))(images, SIZES, TARGETS, teacher, iteration=1)


# ---- 2. FCOS -------------------------------------------------------------------------------------


def test_fcos_dense_extras_have_centreness_and_decode(images):
    """FCOS dense extras (student and teacher): one point per location (N = sum H·W), ctrness
    [B, N, 1], and ``decode()`` uses FCOS's linear coder: codes 0 give the point, codes 1 give
    the point ± its size."""
    torch.manual_seed(0)
    teacher, student = freeze_as_teacher(tiny("fcos", 64)), tiny("fcos", 32)
    probe = make_probe({"dense"})
    losses = distiller_for(student, probe)(images, SIZES, TARGETS, teacher, iteration=1)
    assert "det/bbox_ctrness" in losses
    inputs = probe.seen[-1]
    n = sum(level_locations(inputs.all_student_features))
    for role in ("student", "teacher"):
        dense = inputs.extra(role, "dense")
        assert dense.cls_logits.shape == (2, n, NUM_CLASSES + 1)
        assert dense.ctrness is not None and dense.ctrness.shape == (2, n, 1)
        assert dense.num_anchors_per_level == level_locations(inputs.all_student_features)
        boxes = dense.decode()
        assert boxes.shape == (2, n, 4) and torch.isfinite(boxes).all()
        points = torch.stack(dense.anchors)
        centre = torch.cat([(points[..., :2] + points[..., 2:]) / 2] * 2, dim=-1)
        size = torch.cat([points[..., 2:] - points[..., :2]] * 2, dim=-1)
        zero = dataclasses.replace(dense, bbox_regression=torch.zeros_like(dense.bbox_regression)).decode()
        one = dataclasses.replace(dense, bbox_regression=torch.ones_like(dense.bbox_regression)).decode()
        torch.testing.assert_close(zero, centre)
        torch.testing.assert_close(one, centre + size * torch.tensor([-1.0, -1, 1, 1]))


# ---- 3. Faster R-CNN -------------------------------------------------------------------------


def test_faster_rcnn_student_rpn_and_roi_samples_from_the_training_forward(frcnn, images, monkeypatch):
    """Faster R-CNN student extras come from the one training pass (RPN head and box head run
    once): RPNOutputs objectness [B, N] (in the graph), deltas [B, N, 4], proposals per image,
    anchor labels in {-1, 0, 1} with the sampled positives/negatives labelled 1/0; RoISamples
    with background (0) and class labels 1..C whose positives' regression targets decode onto
    their matched ground-truth boxes, every ground-truth box being a sampled positive."""
    teacher, student = frcnn
    probe = make_probe({"rpn", "roi_samples", "anchors"})
    rpn_heads = count_calls(monkeypatch, student.model.rpn.head, "forward")
    box_heads = count_calls(monkeypatch, student.model.roi_heads.box_head, "forward")
    losses = distiller_for(student, probe)(images, SIZES, TARGETS, teacher, iteration=1)
    assert len(rpn_heads) == 1 and len(box_heads) == 1, "a second student pass ran"
    assert {"det/loss_objectness", "det/loss_rpn_box_reg", "det/loss_classifier", "det/loss_box_reg"} <= set(losses)
    inputs = probe.seen[-1]
    rpn = inputs.extra("student", "rpn")
    assert isinstance(rpn, RPNOutputs)
    n = 3 * sum(level_locations(inputs.all_student_features))
    assert rpn.objectness.shape == (2, n) and rpn.objectness.grad_fn is not None
    assert rpn.deltas.shape == (2, n, 4)
    assert sum(rpn.num_anchors_per_level) == n
    assert len(rpn.anchors) == 2 and all(a.shape == (n, 4) for a in rpn.anchors)
    assert all(torch.equal(a, b) for a, b in zip(inputs.extra("student", "anchors"), rpn.anchors))
    post_nms = student.model.rpn._post_nms_top_n["training"]
    assert len(rpn.proposals) == 2
    assert all(p.ndim == 2 and p.shape[1] == 4 and 0 < len(p) <= post_nms for p in rpn.proposals)
    for labels, reg, pos, neg in zip(rpn.labels, rpn.regression_targets, rpn.sampled_positive, rpn.sampled_negative):
        assert labels.shape == (n,) and reg.shape == (n, 4)
        assert set(labels.unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert pos.dtype == torch.bool and neg.dtype == torch.bool and pos.shape == neg.shape == (n,)
        assert pos.any() and neg.any() and not (pos & neg).any()
        assert (labels[pos] == 1).all() and (labels[neg] == 0).all()

    roi = inputs.extra("student", "roi_samples")
    assert isinstance(roi, RoISamples)
    coder = student.model.roi_heads.box_coder
    for b, target in enumerate(TARGETS):
        boxes, labels, matched, reg = roi.boxes[b], roi.labels[b], roi.matched_idxs[b], roi.regression_targets[b]
        assert boxes.shape[1] == 4 and len(boxes) == len(labels) == len(matched) == len(reg) > 0
        assert labels.dtype == torch.int64 and (labels == 0).any()
        assert labels.min() >= 0 and labels.max() <= NUM_CLASSES
        pos = labels > 0
        assert torch.equal(labels[pos], target["labels"][matched[pos]] + 1)
        torch.testing.assert_close(coder.decode_single(reg[pos], boxes[pos]), target["boxes"][matched[pos]],
                                   atol=1e-3, rtol=0)
        for gt_box, gt_label in zip(target["boxes"], target["labels"]):
            hit = (boxes == gt_box).all(dim=1)
            assert hit.any() and (labels[hit] == gt_label + 1).all()


def test_faster_rcnn_teacher_rpn_uses_training_proposal_counts(frcnn, images, monkeypatch):
    """The eval-mode teacher's ``rpn`` extra keeps training-mode post-NMS counts: with
    testing=5 and training=50 each image gets more than 5 (at most 50) proposals, while the
    teacher's own eval-mode RPN call gives at most 5; the teacher stays in eval mode and its
    tensors are ordinary and gradient-free."""
    teacher, student = frcnn
    monkeypatch.setattr(teacher.model.rpn, "_post_nms_top_n", {"training": 50, "testing": 5})
    probe = make_probe(set())
    distiller_for(student, probe)(images, SIZES, TARGETS, teacher, iteration=1)
    inputs = probe.seen[-1]
    rpn = inputs.extra("teacher", "rpn")
    assert all(5 < len(p) <= 50 for p in rpn.proposals), [len(p) for p in rpn.proposals]
    assert not teacher.training and not teacher.model.rpn.training
    for t in (rpn.objectness, rpn.deltas, *rpn.proposals):
        assert not t.is_inference() and not t.requires_grad
    assert rpn.labels is not None, "targets were not passed to the teacher"
    with torch.no_grad():  # control: the testing count is in force in eval mode
        eval_props, _ = teacher.model.rpn(ImageList(images, SIZES), fpn_levels(inputs.all_teacher_features, teacher.adapter.spec))
    assert all(len(p) <= 5 for p in eval_props)


def test_faster_rcnn_teacher_roi_samples_need_targets(frcnn, images):
    """The teacher's ``roi_samples`` are a ValueError without targets and, with the step's
    targets, sampled RoIs with background and class labels."""
    teacher, student = frcnn
    features = teacher.features(images)
    with pytest.raises(ValueError, match="targets"):
        teacher.extras(images, SIZES, features, ["roi_samples"])
    assert set(teacher.extras(images, SIZES, features, ["rpn"])) == {"rpn"}
    probe = make_probe(set())
    distiller_for(student, probe)(images, SIZES, TARGETS, teacher, iteration=1)
    roi = probe.seen[-1].extra("teacher", "roi_samples")
    assert isinstance(roi, RoISamples) and len(roi.labels) == 2
    for labels, target in zip(roi.labels, TARGETS):
        assert labels.dtype == torch.int64 and (labels == 0).any()
        assert set((target["labels"] + 1).tolist()) <= set(labels.tolist())


def test_faster_rcnn_box_head_for_both_roles(frcnn, images):
    """``box_head(role, boxes)`` gives class_logits [R, C+1] and box_regression [R, 4(C+1)] for
    student and teacher; the student's backpropagates into its box head and predictor, the
    teacher's is an ordinary tensor without grad."""
    teacher, student = frcnn
    probe = make_probe(set())
    distiller_for(student, probe)(images, SIZES, TARGETS, teacher, iteration=1)
    inputs = probe.seen[-1]
    r = sum(len(b) for b in QUERY_BOXES)
    outputs = {}
    for role in ("student", "teacher"):
        cls, reg = inputs.box_head(role, QUERY_BOXES)
        assert cls.shape == (r, NUM_CLASSES + 1) and reg.shape == (r, 4 * (NUM_CLASSES + 1))
        outputs[role] = (cls, reg)
    t_cls, t_reg = outputs["teacher"]
    assert not t_cls.requires_grad and not t_reg.requires_grad
    assert not t_cls.is_inference() and not t_reg.is_inference()
    s_cls, s_reg = outputs["student"]
    loss = (s_cls - t_cls).pow(2).mean() + (s_reg - t_reg).pow(2).mean()
    roi_heads = student.model.roi_heads
    params = [roi_heads.box_head.fc6.weight, roi_heads.box_predictor.cls_score.weight,
              roi_heads.box_predictor.bbox_pred.weight]
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss, params))


# ---- 4. RoIAlign ---------------------------------------------------------------------------------


def test_roi_align_shapes_values_and_warmup_detach(retina, images):
    """``roi_align`` gives [sum R, C, k, k] (C each role's FPN width) equal to torchvision's
    roi_align on the finest distilled level for small boxes; during the distillation warm-up
    (detach_student) no gradient reaches the student, afterwards it does."""
    teacher, student = retina

    def body(method, inputs):
        pooled = inputs.roi_align("student", QUERY_BOXES, output_size=5)
        return {"distill/probe/roi": method.scale * pooled.pow(2).mean()}

    probe = make_probe(set(), body)
    distiller = Distiller(student, probe, levels=("p3", "p4"), strides=(8, 16), warmup_iters=5).train()
    r = sum(len(b) for b in QUERY_BOXES)

    student_params = [p for p in student.parameters() if p.requires_grad]
    p3_conv = student.model.backbone.fpn.layer_blocks[0][0].weight  # p3's output conv
    for iteration, reaches_student in ((0, False), (5, True)):
        losses = distiller(images, SIZES, TARGETS, teacher, iteration=iteration)
        inputs = probe.seen[-1]
        assert inputs.detach_student is not reaches_student
        loss = losses["distill/probe/roi"]
        if reaches_student:
            scale_grad, conv_grad = torch.autograd.grad(loss, [probe.scale, p3_conv])
            assert conv_grad.abs().sum() > 0
        else:
            scale_grad, *grads = torch.autograd.grad(loss, [probe.scale, *student_params], allow_unused=True)
            assert all(g is None for g in grads), "a gradient reached the student in the warm-up"
        assert scale_grad.abs() > 0

    for role, channels, features in (("student", 32, inputs.all_student_features),
                                     ("teacher", 48, inputs.all_teacher_features)):
        pooled = inputs.roi_align(role, QUERY_BOXES, output_size=5)
        assert pooled.shape == (r, channels, 5, 5)
        reference = torchvision.ops.roi_align(features["p3"], QUERY_BOXES, output_size=5,
                                              spatial_scale=1 / 8, sampling_ratio=2)
        torch.testing.assert_close(pooled, reference)
        assert inputs.roi_align(role, QUERY_BOXES, levels=("p3",), output_size=3).shape == (r, channels, 3, 3)


# ---- 5. a method optimised with the student's SGD ---------------------------------------------


class Imitation(DistillMethod):
    """FitNet-like: a 1x1 adapter and MSE on the distilled levels."""

    name = "imitation"

    def __init__(self, optim: MethodOptim, **kw) -> None:
        super().__init__(optim, **kw)
        self.adapter = nn.Conv2d(32, 48, 1)

    def forward(self, inputs: DistillInputs):
        if not inputs.has_student:
            return {}
        loss = sum((self.adapter(s) - t).pow(2).mean() for s, t in zip(inputs.student_levels, inputs.teacher_levels))
        return {"distill/imitation/feature": loss}


def tiny_batch():
    g = torch.Generator().manual_seed(0)
    items = [(torch.rand(3, h, w, generator=g), {**t, "image_id": i}) for i, ((h, w), t) in enumerate(zip(SIZES, TARGETS))]
    return collate_batch(items)


def sgd_param_ids(opts) -> set[int]:
    return {id(p) for group in opts.student.param_groups for p in group["params"]}


def test_student_optimised_method_lives_in_the_student_sgd(retina):
    """With ``MethodOptim(kind="student")`` the method's parameters join the student's SGD
    (no own optimiser); one ``train_step`` updates them. With the default own-AdamW kind they
    stay out of the SGD and get their own optimiser (control)."""
    teacher, _ = retina
    torch.manual_seed(0)
    cfg = load_config(None, ["model.family=retinanet", "solver.base_lr=0.01", "solver.warmup_iters=0",
                             "solver.max_iter=10", "solver.ims_per_batch=2"])
    cpu = torch.device("cpu")

    method = Imitation(MethodOptim(kind="student"))
    student = tiny("retinanet", 32)
    distiller = distiller_for(student, method)
    opts = build_optimisers(cfg, distiller, total_iters=10, device=cpu)
    method_ids = {id(p) for p in method.parameters()}
    assert method_ids <= sgd_param_ids(opts)
    assert {id(p) for p in student.parameters() if p.requires_grad} <= sgd_param_ids(opts)
    assert opts.method is None and opts.method_sched is None
    before = [p.detach().clone() for p in method.parameters()]
    step = StepContext(distiller, distiller, teacher, opts, DistContext(device=cpu), student_clip_value=1.0)
    total, losses = train_step(step, tiny_batch(), 0)
    assert "distill/imitation/feature" in losses and torch.isfinite(total)
    for old, new in zip(before, method.parameters()):
        assert not torch.equal(old, new), "train_step did not update the method's parameters"

    own = Imitation(MethodOptim())
    own_opts = build_optimisers(cfg, distiller_for(retina[1], own), total_iters=10, device=cpu)
    assert not ({id(p) for p in own.parameters()} & sgd_param_ids(own_opts))
    assert own_opts.method is not None
    assert {id(p) for g in own_opts.method.param_groups for p in g["params"]} == {id(p) for p in own.parameters()}


def test_student_optimised_method_cannot_have_a_method_only_stage(retina):
    """``method_only_iters > 0`` with ``kind="student"`` is a ConfigError naming the method (the
    same stage with an own optimiser is accepted)."""
    teacher, student = retina
    cfg = load_config(None, ["solver.base_lr=0.01"])
    bad = distiller_for(student, Imitation(MethodOptim(kind="student"), method_only_iters=3))
    with pytest.raises(ConfigError, match="imitation"):
        build_optimisers(cfg, bad, total_iters=10, device=torch.device("cpu"))
    good = distiller_for(student, Imitation(MethodOptim(), method_only_iters=3))
    assert build_optimisers(cfg, good, total_iters=10, device=torch.device("cpu")).method is not None


# ---- 6. the registry -----------------------------------------------------------------------------


def test_unknown_method_lists_every_registered_name(retina, prior, monkeypatch):
    """``build_method``/``build_distiller`` with an unknown name raise ConfigError listing every
    registered name plus ``none``, read from the registry itself (a method registered later is
    listed too, gets its config section, and then builds)."""
    teacher, student = retina
    ctx = MethodContext(teacher, student, prior, student.level_names, student.strides)

    def names_in(message: str) -> set[str]:
        return {name for name in (*method_names(), NO_METHOD) if re.search(rf"\b{re.escape(name)}\b", message)}

    with pytest.raises(ConfigError) as err:
        build_method(DistillConfig(method="telepathy"), ctx)
    assert "telepathy" in str(err.value) and names_in(str(err.value)) == {*method_names(), NO_METHOD}

    @dataclass(frozen=True)
    class ProbeConfig:
        strength: float = 1.0

    spec = registry.MethodSpec(name="probe", section=ProbeConfig, build=lambda cfg, ctx: make_probe(set()),
                               needs={registry.ONE_STAGE: frozenset()}, native=frozenset(), paper="a test")
    monkeypatch.setitem(registry._REGISTRY, "probe", spec)
    with pytest.raises(ConfigError) as err:
        build_distiller(DistillConfig(method="telepathy"), student, teacher, prior=prior)
    assert names_in(str(err.value)) == {*method_names(), NO_METHOD} and "probe" in str(err.value)
    dcfg = load_config(None, ["distill.method=probe", "distill.probe.strength=2"]).distill
    assert dcfg.probe == ProbeConfig(strength=2.0)
    distiller, _ = build_distiller(dcfg, student, teacher, prior=prior)
    assert distiller.method.name == "probe"


def test_config_choices_match_the_registry():
    """``distill.method`` accepts exactly the registered methods and ``none``; each has a section."""
    assert NO_METHOD == "none"
    for name in (*method_names(), NO_METHOD):
        dcfg = load_config(None, [f"distill.method={name}"]).distill
        assert dcfg.method == name and (name == NO_METHOD or hasattr(dcfg, name))
    with pytest.raises(ConfigError, match="distill.method"):
        load_config(None, ["distill.method=telepathy"])


# ---- 7. the shipped methods ----------------------------------------------------------------------


@pytest.mark.parametrize("name, terms", [("icd", {"idf", "reg", "feature"}), ("fitnet", {"feature"})])
def test_shipped_methods_fill_the_slot(name, terms, retina, prior, images, monkeypatch):
    """ICD and FitNet are registered, built by ``build_distiller``, declare no extras (the
    student's forward is asked for none) and return only ``distill/<name>/<term>`` losses besides
    the student's ``det/*``; the losses backpropagate into the method."""
    teacher, student = retina
    assert name in method_names()
    dcfg = distill_config(method=name, warmup_iters=0, icd={"hidden_dim": 32, "num_heads": 4})
    distiller, report = build_distiller(dcfg, student, teacher, prior=prior)
    method = distiller.method
    assert isinstance(method, DistillMethod) and method.name == name and report is None
    assert method.requires == frozenset()
    train_kwargs = record_kwargs(monkeypatch, student, "forward_train")
    losses = distiller.train()(images, SIZES, TARGETS, teacher, iteration=1)
    assert not set(train_kwargs[-1]["extras"])
    method_keys = {k for k in losses if not k.startswith("det/")}
    assert method_keys == {f"distill/{name}/{term}" for term in terms}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    grads = torch.autograd.grad(sum(losses[k] for k in method_keys), list(method.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_student_gradient_clipping_applies_to_plain_runs_unless_the_release_behaviour_is_chosen():
    """solver.grad_clip_runs: all clips the baseline's gradients too; distill leaves them alone."""
    from icdistill.config import load_config
    from icdistill.distill.core.distiller import Distiller
    from icdistill.engine.distributed import DistContext
    from icdistill.engine.step import StepContext, build_optimisers, train_step
    from icdistill.structures import collate_batch

    g = torch.Generator().manual_seed(0)
    batch = collate_batch([(torch.rand(3, 64, 96, generator=g),
                            {"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([1]), "image_id": 0})])
    seen = {}
    for runs in ("all", "distill"):
        torch.manual_seed(0)
        student = build_detector("retinanet", backbone="resnet18", num_classes=3, fpn_channels=32,
                                 anchor_sizes=(16, 32, 64, 128, 256))
        distiller = Distiller(student).train()
        cfg = load_config(None, [f"solver.grad_clip_runs={runs}", "solver.grad_clip_value=0.000001", "solver.base_lr=0.0"])
        opts = build_optimisers(cfg, distiller, total_iters=1, device=torch.device("cpu"))
        step = StepContext(distiller, distiller, None, opts, DistContext(),
                           student_clip_value=cfg.solver.grad_clip_value, clip_plain_runs=runs == "all")
        train_step(step, batch, 0)
        seen[runs] = max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None)
    assert seen["all"] <= 1e-6 < seen["distill"]


def test_distillation_warmup_null_is_the_methods_own_default():
    """distill.warmup_iters null: the method spec's (ICD's 1000, the release's BYPASS_DISTILL;
    FGFI's 25), none for the others; a set value wins (``--set distill.method=mimic`` no longer
    inherits ICD's warm-up)."""
    from icdistill.distill.build import warmup_iters

    assert [warmup_iters(distill_config(method=m)) for m in ("icd", "fgfi", "mimic", "fitnet", "defeat")] == [
        1000, 25, 0, 0, 0]
    assert warmup_iters(distill_config(method="mimic", warmup_iters=7)) == 7
    assert warmup_iters(distill_config(method="none")) == 0
