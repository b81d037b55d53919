"""Li et al. 2017 (``mimic``), FGFI (``fgfi``), Chen et al. 2017 (``chen2017``) and FitNet's
variants: METHODS_SPEC §2, §3, §4 and §8's numeric checks on constructed anchors, boxes and
features; each method on every family it is defined for with tiny real detectors (gradients reach
the student and the method's own parts, never the teacher); one CLI run per method."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
from torchvision.ops.poolers import LevelMapper

from icdistill.cli import main
from icdistill.config import load_config
from icdistill.data.prior import DatasetPrior
from icdistill.detectors import build_detector, freeze_as_teacher
from icdistill.detectors.assign import BACKGROUND, IGNORED, assign
from icdistill.distill.build import build_distiller
from icdistill.distill.chen2017 import Chen2017, binary_soft_ce, bounded_regression, weighted_soft_ce
from icdistill.distill.fgfi import FGFI, fgfi_loss, fgfi_masks
from icdistill.distill.methods.fitnet import FitNet
from icdistill.distill.core.inputs import DistillInputs
from icdistill.distill.mimic import Mimic, dense_pseudo_proposals, mimic_loss
from icdistill.distill.methods._parts import LevelAdapters, gt_level_index
from icdistill.errors import ConfigError

SIZES = [(64, 96), (60, 70)]
TARGETS = [
    {"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([0])},
    {"boxes": torch.tensor([[10.0, 10, 30, 50], [40, 5, 60, 25]]), "labels": torch.tensor([1, 2])},
]


def feature_inputs(teacher, student, sizes, strides, **kw):
    """DistillInputs holding only features, sizes and strides (no detectors)."""
    names = [f"p{i}" for i in range(len(teacher))]
    return DistillInputs(
        images=torch.zeros(teacher[0].shape[0], 3, 1, 1), image_sizes=sizes, targets=kw.pop("targets", []),
        iteration=10, levels=names, strides=strides, teacher=None, teacher_features=OrderedDict(zip(names, teacher)),
        student=None, student_features=None if student is None else OrderedDict(zip(names, student)), **kw,
    )


# ---- FitNet variants (§2) -------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["1x1", "3x3"])
def test_fitnet_identity_adapter_gives_zero(adapter):
    fit = FitNet(student_channels=4, teacher_channels=4, num_levels=2, adapter=adapter)
    fit.adapters.set_identity_()
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    for normalize in ("none", "defeat", "l2_per_image"):
        fit.normalize = normalize
        loss = fit(feature_inputs(feats, [f.clone() for f in feats], [(64, 64), (40, 30)], [8, 16]))
        assert float(loss["distill/fitnet/feature"]) == 0.0


def test_fitnet_normalisations_on_constant_maps_and_padding():
    """t = 0, A(s) = 1: the project's mean 1.0, DeFeat's Σ/2BHWC 0.5; the project's loss ignores
    the padded region, l2_per_image is invariant to scaling s by 3."""
    t, s = [torch.zeros(2, 3, 4, 4)], [torch.ones(2, 3, 4, 4)]
    fit = FitNet(student_channels=3, teacher_channels=3, adapter="none")
    assert float(fit.loss(t, s, [torch.ones(2, 4, 4, dtype=torch.bool)])) == 1.0
    fit.normalize = "defeat"
    assert float(fit.loss(t, s, [torch.ones(2, 4, 4, dtype=torch.bool)])) == 0.5

    fit.normalize = "none"
    teacher, student = [torch.randn(1, 3, 8, 8)], torch.randn(1, 3, 8, 8)
    changed = student.clone()
    changed[..., 4:, :] = 100.0  # rows 4.. are padding for a 32-pixel-high image at stride 8
    base = fit(feature_inputs(teacher, [student], [(32, 64)], [8]))["distill/fitnet/feature"]
    assert torch.equal(base, fit(feature_inputs(teacher, [changed], [(32, 64)], [8]))["distill/fitnet/feature"])

    fit.normalize = "l2_per_image"
    valid = [torch.ones(1, 8, 8, dtype=torch.bool)]
    torch.testing.assert_close(fit.loss(teacher, [student], valid), fit.loss(teacher, [3 * student], valid))


def test_fitnet_reads_checkpoints_of_earlier_versions():
    """Before the variants, the shared 1x1 conv was ``adapter``: such a state dict loads."""
    old = {"adapter.weight": torch.randn(6, 4, 1, 1), "adapter.bias": torch.randn(6)}
    fit = FitNet(student_channels=4, teacher_channels=6)
    fit.load_state_dict(old)
    assert torch.equal(fit.adapter.weight, old["adapter.weight"]) and torch.equal(fit.adapter.bias, old["adapter.bias"])


def test_trunc_init_is_small_and_adapter_none_needs_equal_widths(tmp_path):
    adapters = LevelAdapters("3x3", 4, 6, 2, init="trunc1e-4")
    assert len(adapters.convs) == 2 and all(c.weight.abs().max() <= 2e-4 for c in adapters.convs)
    assert len(LevelAdapters("1x1", 4, 6, 5, shared=True).convs) == 1
    teacher, student = freeze_as_teacher(tiny("retinanet", 48)), tiny("retinanet", 32)
    cfg = load_config(None, ["distill.method=fitnet", "distill.fitnet.adapter=none"]).distill
    with pytest.raises(ConfigError, match=r"distill\.fitnet\.adapter.*1x1, 3x3"):
        build_distiller(cfg, student, teacher, prior=PRIOR)
    student_sgd = load_config(None, ["distill.method=fitnet", "distill.fitnet.adapter_optim=student"]).distill
    assert build_distiller(student_sgd, student, teacher, prior=PRIOR)[0].method.optim.kind == "student"


# ---- Li et al. 2017 (§3) --------------------------------------------------------------------


def test_mimic_loss_values_and_level_mapping():
    boxes = [torch.tensor([[3.0, 5, 50, 40], [0, 0, 20, 60]])]
    t = [torch.zeros(1, 4, 16, 16)]
    mimic = Mimic(two_stage=True, student_channels=4, teacher_channels=4, regions="gt")
    ones = feature_inputs(t, [torch.ones(1, 4, 16, 16)], [(64, 64)], [4], targets=[{"boxes": boxes[0]}])
    assert float(mimic(ones)["distill/mimic/feature"]) == pytest.approx(0.5)  # RoIAlign of a constant
    same = torch.randn(1, 4, 16, 16)
    equal = feature_inputs([same], [same.clone()], [(64, 64)], [4], targets=[{"boxes": boxes[0]}])
    assert float(mimic(equal)["distill/mimic/feature"]) == 0.0
    assert float(mimic_loss(torch.zeros(3, 2, 7, 7), torch.ones(3, 2, 7, 7))) == 0.5
    box = torch.tensor([[0.0, 0, 112, 112]])
    assert int(gt_level_index(box, 4)) == 1  # p3 when index 0 is p2
    assert int(LevelMapper(2, 5)([box])) + 2 == 3  # torchvision's mapper: p3 as well


def test_mimic_without_regions_is_zero_with_grad():
    student = [torch.randn(1, 4, 16, 16, requires_grad=True)]
    mimic = Mimic(two_stage=True, student_channels=4, teacher_channels=4, regions="gt")
    inputs = feature_inputs([torch.randn(1, 4, 16, 16)], student, [(64, 64)], [4],
                            targets=[{"boxes": torch.zeros(0, 4)}])
    loss = mimic(inputs)["distill/mimic/feature"]
    assert float(loss) == 0.0 and loss.requires_grad


def test_dense_pseudo_proposals_clip_rank_and_suppress():
    boxes = torch.tensor([[[0.0, 0, 20, 20], [1, 1, 21, 21], [40, 40, 90, 90], [5, 5, 5.0001, 5.0001]]])
    scores = torch.tensor([[0.5, 0.9, 0.3, 0.99]])
    out = dense_pseudo_proposals(boxes, scores, [(64, 64)], pre_nms_top_n=3, nms_thresh=0.7, max_proposals=5)
    # the tiny box is dropped, [1,1,21,21] suppresses its overlap, the last is clipped to 64
    torch.testing.assert_close(out[0], torch.tensor([[1.0, 1, 21, 21], [40, 40, 64, 64]]))


# ---- FGFI (§4) ----------------------------------------------------------------------------------


def grid_anchors(size: int = 4, stride: int = 16, side: float = 16.0):
    """One ``side``-square anchor centred on (stride·x, stride·y): float[size, size, 1, 4]."""
    ys, xs = torch.meshgrid(torch.arange(size) * stride, torch.arange(size) * stride, indexing="ij")
    centre = torch.stack([xs, ys], -1).float()
    return torch.cat([centre - side / 2, centre + side / 2], -1)[:, :, None]


def test_fgfi_constructed_mask():
    anchors, gt = grid_anchors(), torch.tensor([[0.0, 0, 32, 32]])
    for mode in ("assigned", "joint"):
        (mask,) = fgfi_masks([anchors], gt, psi=0.5, mode=mode)
        assert mask.nonzero().tolist() == [[1, 1]]
        (mask,) = fgfi_masks([anchors], gt, psi=0.4, mode=mode)
        assert sorted(mask.nonzero().tolist()) == [[0, 1], [1, 0], [1, 1], [1, 2], [2, 1]]
    assert not fgfi_masks([anchors], torch.zeros(0, 4))[0].any()
    # assigned: the box goes to its base-56 level only; joint: to wherever the best anchors are
    two = [grid_anchors(), grid_anchors(2, 32, 32.0)]
    assert [m.any().item() for m in fgfi_masks(two, gt, mode="assigned")] == [True, False]
    assert gt_level_index(torch.tensor([[0.0, 0, 64, 64], [0, 0, 200, 100], [0, 0, 500, 500]]), 5).tolist() == [0, 1, 3]


def test_fgfi_loss_values():
    t, s = [torch.zeros(1, 2, 4, 4)], [torch.ones(1, 2, 4, 4)]
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = True
    assert float(fgfi_loss(t, s, [mask], norm="paper")) == 1.0
    assert float(fgfi_loss(t, s, [mask], norm="defeat")) == 0.5
    empty = fgfi_loss(t, s, [torch.zeros_like(mask)])
    assert float(empty) == 0.0 and not torch.isnan(empty)
    fgfi = FGFI(student_channels=2, teacher_channels=2, num_levels=1)
    fgfi.adapters.set_identity_()
    feats = torch.randn(1, 2, 4, 4)
    assert float(fgfi_loss([feats], fgfi.adapters([feats.clone()]), [mask | True])) == 0.0


# ---- Chen et al. 2017 (§8) ------------------------------------------------------------------


def test_chen_bounded_regression_and_soft_losses():
    y, r_s = torch.zeros(2, 4), torch.tensor([[1.0, 0, 0, 0]] * 2)
    r_t = torch.tensor([[0.5, 0, 0, 0], [2, 0, 0, 0]])
    assert bounded_regression(r_s, r_t, y).tolist() == [1.0, 0.0]
    weights = torch.tensor([1.5, 1.0])
    half = torch.zeros(1, 2)  # P = [0.5 (bg), 0.5]
    assert float(weighted_soft_ce(half, half, weights)) == pytest.approx(1.25 * math.log(2), abs=1e-6)
    assert float(binary_soft_ce(torch.zeros(3), torch.zeros(3))) == pytest.approx(1.25 * math.log(2), abs=1e-6)
    assert float(weighted_soft_ce(torch.zeros(0, 2), torch.zeros(0, 2), weights)) == 0.0


def test_chen_mu_one_keeps_the_hard_loss_and_identity_hint_is_zero():
    """μ = 1: every *_cls term is exactly 0 (the total classification loss is the detector's
    own); t = s through identity adapters: the hint is 0."""
    chen = Chen2017(two_stage=False, student_channels=4, teacher_channels=4, num_levels=1, mu=1.0)
    chen.adapters.set_identity_()
    hard = torch.tensor(2.0, requires_grad=True)
    assert float(chen._blend(torch.tensor(5.0), hard)) == 0.0
    feats = torch.randn(1, 4, 8, 8)
    inputs = feature_inputs([feats], [feats.clone()], [(64, 64)], [8], detach_student=True)
    assert chen(inputs) == {"distill/chen2017/hint": torch.tensor(0.0)}  # the warm-up: hint only


# ---- assign(boxes): the detector's own matcher ---------------------------------------------


def test_assign_matches_the_detectors_own_rules():
    """RetinaNet: IoU ≥ 0.5 foreground, < 0.4 background, between ignored; the RPN: 0.7 / 0.3;
    FCOS: points inside the box near its centre; no boxes: all background."""
    retina = tiny("retinanet", 32)
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 4.5], [50, 50, 60, 60]])  # IoU 1, .6, .45, 0
    (matched,) = assign(retina, [anchors], [4], [torch.tensor([[0.0, 0, 10, 10]])])
    assert matched.tolist() == [0, 0, IGNORED, BACKGROUND]
    (none,) = assign(retina, [anchors], [4], [torch.zeros(0, 4)])
    assert (none == BACKGROUND).all()
    frcnn = tiny("faster_rcnn", 32)  # the RPN's matcher: 0.7 / 0.3
    (matched,) = assign(frcnn, [anchors], [4], [torch.tensor([[0.0, 0, 10, 10]])])
    assert matched.tolist() == [0, IGNORED, IGNORED, BACKGROUND]
    fcos = tiny("fcos", 32)
    points = torch.tensor([[16.0, 16, 24, 24], [60, 60, 68, 68]])  # FCOS anchors: stride-sized squares
    (matched,) = assign(fcos, [points], [2], [torch.tensor([[0.0, 0, 40, 40]])])
    assert matched.tolist() == [0, BACKGROUND]


# ---- on real tiny detectors -----------------------------------------------------------------

PRIOR = DatasetPrior(names=["a", "b", "c"], freq=[2.0, 1.0, 1.0], w_mean=[0.2] * 3, w_std=[0.05] * 3,
                     h_mean=[0.2] * 3, h_std=[0.05] * 3, num_images=10)


def tiny(family: str, width: int):
    """A resnet18 detector; two-stage ones with small proposal and RoI counts (test speed)."""
    two_stage = family == "faster_rcnn"
    detector = build_detector(family, backbone="resnet18", num_classes=3, fpn_channels=width,
                              anchor_sizes=(16, 32, 64, 128, 256),
                              box_batch_size_per_image=64 if two_stage else None)
    if two_stage:
        detector.model.rpn._pre_nms_top_n["training"] = 300
        detector.model.rpn._post_nms_top_n["training"] = 100
    return detector


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 96)


# The families each method supports, minus the one its CLI test runs (METHODS_SPEC §10).
IN_PROCESS = [("mimic", "faster_rcnn"), ("mimic", "fcos"), ("fgfi", "faster_rcnn"), ("fgfi", "fcos"),
              ("chen2017", "faster_rcnn"), ("chen2017", "fcos"), ("fitnet", "faster_rcnn")]
TERMS = {"mimic": {"feature"}, "fgfi": {"feature"}, "fitnet": {"feature"},
         "chen2017": {"hint", "rpn_cls", "rpn_reg", "rcn_cls", "rcn_reg"}}


@pytest.mark.parametrize(("method", "family"), IN_PROCESS, ids=lambda v: v)
def test_method_on_a_family_trains_student_and_own_parts_only(method, family, images):
    torch.manual_seed(0)
    teacher, student = freeze_as_teacher(tiny(family, 64)), tiny(family, 32)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sets = [f"distill.method={method}", "distill.warmup_iters=0", "distill.fitnet.adapter=3x3"]
    distiller, _ = build_distiller(load_config(None, sets).distill, student, teacher, prior=PRIOR)
    distiller.train()
    losses = distiller(images, SIZES, TARGETS, teacher, iteration=0)
    terms = {k.split("/")[-1] for k in losses if k.startswith(f"distill/{method}/")}
    expected = TERMS[method] if method != "chen2017" or family == "faster_rcnn" else {"hint", "cls", "reg"}
    assert terms == expected and all(torch.isfinite(v) for v in losses.values())
    distill_total = sum(v for k, v in losses.items() if k.startswith("distill/"))
    distill_total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.method.parameters()) \
        or not list(distiller.method.parameters())
    fpn = [p for n, p in student.named_parameters() if "fpn" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fpn)
    if method == "chen2017" and family == "faster_rcnn":  # μ = 0: hard + correction = λ·soft
        _check_chen_blend(distiller, teacher, images)


def _check_chen_blend(distiller, teacher, images):
    method = distiller.method
    method.mu = 0.0
    inputs_seen = {}
    original = method.two_stage_terms

    def spy(inputs):
        inputs_seen["x"] = inputs
        return original(inputs)

    method.two_stage_terms = spy
    losses = distiller(images, SIZES, TARGETS, teacher, iteration=0)
    inputs = inputs_seen["x"]
    s_rpn, t_rpn = inputs.extra("student", "rpn"), inputs.extra("teacher", "rpn")
    sampled = torch.cat(s_rpn.sampled_positive) | torch.cat(s_rpn.sampled_negative)
    soft = binary_soft_ce(s_rpn.objectness.flatten()[sampled], t_rpn.objectness.flatten()[sampled])
    torch.testing.assert_close(losses["det/loss_objectness"] + losses["distill/chen2017/rpn_cls"], soft)


def test_chen_hint_on_the_backbones_last_stage(images):
    """``hint_layer: c5``: the hint imitates the teacher's C5 (taken in the same forward pass)
    through a 1x1 adapter C5_s -> C5_t; its gradient reaches the student's last backbone stage."""
    torch.manual_seed(0)
    teacher, student = freeze_as_teacher(tiny("retinanet", 48)), tiny("retinanet", 32)
    cfg = load_config(None, ["distill.method=chen2017", "distill.warmup_iters=0", "distill.chen2017.hint_layer=c5"])
    distiller, _ = build_distiller(cfg.distill, student, teacher, prior=PRIOR)
    (adapter,) = distiller.method.adapters.convs
    assert adapter.in_channels == adapter.out_channels == 512  # resnet18's C5
    losses = distiller.train()(images, SIZES, TARGETS, teacher, iteration=0)
    c5 = distiller.method.taps[1].value
    assert c5.shape[-2:] == (2, 3)  # 64x96 at stride 32
    layer4 = student.model.backbone.body.layer4[-1].conv2.weight
    (grad,) = torch.autograd.grad(losses["distill/chen2017/hint"], [layer4])
    assert grad.abs().sum() > 0


def test_one_stage_methods_need_matching_teachers():
    cfg = load_config(None, ["distill.method=chen2017"]).distill
    # A one-stage teacher cannot hand a two-stage student's method the RPN / RoI outputs it needs.
    with pytest.raises(ConfigError, match="needs the extras roi_samples, rpn from the teacher as well; the "
                                          "retinanet teacher provides only anchors, dense"):
        _build_checked(cfg, "faster_rcnn", "retinanet")
    with pytest.raises(ConfigError, match="teacher must be a retinanet"):
        _build_checked(cfg, "retinanet", "fcos")


def _build_checked(dcfg, student_family, teacher_family):
    """The builder alone (level alignment of mixed pyramids is checked elsewhere)."""
    from icdistill.distill.build import build_method
    from icdistill.distill.core.context import MethodContext

    student, teacher = tiny(student_family, 32), freeze_as_teacher(tiny(teacher_family, 32))
    return build_method(dcfg, MethodContext(teacher, student, PRIOR, ("p3",), (8,)))


# ---- the CLI, one run per method ------------------------------------------------------------


@pytest.mark.parametrize("method", ["mimic", "fgfi", "chen2017"])
def test_method_from_the_cli(method, tiny_teacher, tmp_path, tiny_overrides, empty_config):
    """RetinaNet (tiny) -> RetinaNet: 2 iterations, one of warm-up; metrics.json has box AP."""
    run = tmp_path / method
    sets = [f"--set={s}" for s in tiny_overrides]
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(run), *sets,
                 f"--set=distill.method={method}", "--set=distill.warmup_iters=1",
                 "--set=distill.mimic.max_proposals=100", "--set=eval.viz_images=0", "--set=solver.max_iter=2",
                 "--set=teacher.family=retinanet", "--set=teacher.backbone=resnet18",
                 "--set=teacher.fpn_channels=32", "--set=teacher.anchor_sizes=[16, 32, 64, 128, 256]",
                 f"--set=teacher.weights={tiny_teacher}"]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {k for row in log for k in row if k.startswith(f"distill/{method}/")}
    assert logged, f"no distill/{method}/* loss logged"
    assert "bbox/AP" in json.loads((run / "metrics.json").read_text())


# ---- the recipes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "rule"), [
    ("distill.fgfi.psi", 1.5, "at most 1"), ("distill.fgfi.psi", 0, "positive"),
    ("distill.mimic.max_proposals", 0, "positive"), ("distill.mimic.nms_thresh", 2, "at most 1"),
    ("distill.chen2017.mu", -0.1, ">= 0"), ("distill.chen2017.temperature", 0, "positive"),
    ("distill.chen2017.hint_layer", "c4", "fpn, c5"), ("distill.fitnet.normalize", "l1", "none, defeat, l2_per_image"),
])
def test_bad_method_options_are_config_errors_naming_the_key(key, value, rule):
    with pytest.raises(ConfigError, match=rf"'{key}'.*{rule}"):
        load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("method", ["fitnet", "mimic", "fgfi", "chen2017"])
def test_recipes_follow_the_protocols(method):
    """VOC: Table 7's protocol (R-101 -> R-50, 18k iterations) for both families; COCO (Table
    13's fgfi and chen2017): R-101 3x teachers, 1x students; BCCD: the suite's FCOS pair."""
    from icdistill.demo import demo_config_path

    root = demo_config_path("student").parents[1]
    for family in ("faster_rcnn", "retinanet"):
        voc = load_config(root / "voc" / f"{family}_R50_{method}.yaml")
        assert (voc.distill.method, voc.solver.max_iter, voc.model.family, voc.teacher.family) == \
            (method, 18000, family, family)
        assert (voc.teacher.backbone, voc.model.backbone) == ("resnet101", "resnet50")
        if method in ("fgfi", "chen2017"):
            coco = load_config(root / "coco" / f"{family}_R50_1x_{method}.yaml")
            assert coco.distill.method == method and coco.teacher.backbone == "resnet101"
            assert coco.solver.max_iter == 90000
    bccd = load_config(root / "voc" / f"bccd_{method}.yaml")
    assert bccd.distill.method == method and bccd.model.family == bccd.teacher.family == "fcos"
    assert bccd.distill.warmup_iters == {"fitnet": 10, "mimic": 0, "fgfi": 50, "chen2017": 0}[method]
