"""CrossKD (``crosskd``): the head split (``head_hold`` / ``head_from``), the defining formulas on
reference cases worked by hand and on cases computed here, self-distillation, gradient routing
(no teacher gradient; the student's layers past k get none), the ignore mask, widths that differ,
the config section, the builder's checks, and 2-iteration CLI runs on RetinaNet, FCOS and
Faster R-CNN."""

import math
from types import SimpleNamespace

import pytest
import torch

from distill_helpers import SIZES, TARGETS, assert_recipes_follow_the_paper_protocols, cli_distill, tiny
from torchvision.ops import box_iou

from icdistill.config import load_config
from icdistill.demo import demo_config_path
from icdistill.detectors import freeze_as_teacher
from icdistill.detectors.assign import assign
from icdistill.detectors.extras import DENSE, HEAD_HOLD
from icdistill.detectors.head_split import flat_tower, head_from, relu_positions, tower_depth
from icdistill.distill.core.distiller import Distiller
from icdistill.distill.methods.pkd import pearson_imitation_loss
from icdistill.distill.methods.crosskd import (
    WithPKD,
    CrossKDConfig, align_statistics, build_crosskd, fcos_weights, giou_distill_loss, iou_log_loss,
    kd_quality_focal_loss, retinanet_weights, roi_delta_l1_loss, roi_kl_loss, weighted_sum,
)
from icdistill.errors import ConfigError


def context(teacher, student, weight_scale: float = 1.0):
    return SimpleNamespace(teacher=teacher, student=student, weight_scale=weight_scale,
                           levels=getattr(student, "level_names", ()))


def pair(family: str, teacher_width: int = 32, student_width: int = 32, seed: int = 0, teacher_family: str | None = None):
    torch.manual_seed(seed)
    teacher = freeze_as_teacher(tiny(teacher_family or family, teacher_width))
    student = tiny(family, student_width)
    return teacher, student


def distiller_for(teacher, student, section: CrossKDConfig = CrossKDConfig()) -> Distiller:
    method = build_crosskd(section, context(teacher, student))
    levels = student.level_names
    return Distiller(student, method, levels=levels, strides=student.strides).train()


def kd_losses(distiller: Distiller, teacher, images: torch.Tensor, targets=TARGETS) -> dict[str, torch.Tensor]:
    losses = distiller(images, SIZES, targets, teacher=teacher, iteration=10)
    return {k: v for k, v in losses.items() if k.startswith("distill/crosskd/")}


# ---------------------------------------------------------------- reference cases worked by hand


def test_alignment_moves_the_student_to_the_teacher_statistics():
    student = torch.tensor([[1.0, 2], [3, 4]]).view(1, 1, 2, 2)
    teacher = torch.tensor([[10.0, 10], [12, 12]]).view(1, 1, 2, 2)
    aligned = align_statistics(student, teacher).flatten()
    torch.testing.assert_close(aligned, torch.tensor([9.658360, 10.552787, 11.447213, 12.341640]), atol=1e-5, rtol=0)


def test_alignment_over_valid_positions_equals_the_alignment_of_the_cropped_maps():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5) * 3 + 1
    valid = torch.zeros(2, 4, 5, dtype=torch.bool)
    valid[:, :3, :4] = True
    aligned = align_statistics(student, teacher, valid)[:, :, :3, :4]
    expected = align_statistics(student[:, :, :3, :4], teacher[:, :, :3, :4])
    torch.testing.assert_close(aligned, expected)
    # By hand on the cropped maps: the aligned values have the teacher's mean and unbiased std.
    cells = expected.transpose(0, 1).flatten(1)
    t_cells = teacher[:, :, :3, :4].transpose(0, 1).flatten(1)
    torch.testing.assert_close(cells.mean(1), t_cells.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(cells.std(1), t_cells.std(1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cross, teacher, expected", [(0.0, math.log(3), 0.1732868), (2.0, -1.0, 0.9722662)])
def test_kd_quality_focal_loss_spec_values(cross, teacher, expected):
    value = kd_quality_focal_loss(torch.tensor([cross]), torch.tensor([teacher]))
    assert math.isclose(float(value), expected, rel_tol=1e-6)


def test_kd_quality_focal_loss_with_beta_two_by_hand():
    x, y = 0.5, -0.3
    p, q = 1 / (1 + math.exp(-x)), 1 / (1 + math.exp(-y))
    bce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    value = kd_quality_focal_loss(torch.tensor([x]), torch.tensor([y]), beta=2.0)
    assert math.isclose(float(value), bce * (p - q) ** 2, rel_tol=1e-6)
    # Equal logits: nothing to distil.
    assert float(kd_quality_focal_loss(torch.tensor([1.3]), torch.tensor([1.3]))) == 0.0


def test_regression_losses_and_their_weighting_spec_values():
    teacher = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    cross = torch.tensor([[0.0, 0, 10, 20], [20, 0, 30, 10]])
    giou = giou_distill_loss(cross, teacher)
    torch.testing.assert_close(giou, torch.tensor([0.5, 4 / 3]), atol=1e-5, rtol=0)
    weight = torch.tensor([0.0, math.log(3)]).sigmoid()  # 0.5 and 0.75
    assert math.isclose(float(weighted_sum(giou, weight, 2.0)), 0.625, rel_tol=1e-5)
    half = iou_log_loss(torch.tensor([[0.0, 0, 10, 20]]), torch.tensor([[0.0, 0, 10, 10]]))
    assert math.isclose(float(half), 0.693147, rel_tol=1e-5)


def test_weighted_sum_ignores_non_finite_losses_at_weight_zero():
    loss = torch.tensor([1.0, float("nan")])
    assert float(weighted_sum(loss, torch.tensor([2.0, 0.0]), 1.0)) == pytest.approx(2.0, rel=1e-6)


# ------------------------------------------------------------------------- the head split


@pytest.mark.parametrize("family", ["retinanet", "fcos", "condinst"])
def test_head_from_the_teacher_holds_gives_the_teacher_head_output_at_every_layer(family):
    teacher, _ = pair(family)
    images = torch.randn(2, 3, 64, 96)
    features = teacher.features(images)
    extras = teacher.extras(images, SIZES, features, [DENSE, HEAD_HOLD])
    dense, holds = extras[DENSE], extras[HEAD_HOLD]
    assert tower_depth(teacher.model.head) == 4 and len(holds.cls) == len(holds.reg) == 5
    for k in range(5):
        out = head_from(teacher, holds.at("cls", k), holds.at("reg", k), k)
        torch.testing.assert_close(out["cls_logits"], dense.cls_logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(out["bbox_regression"], dense.bbox_regression, atol=1e-6, rtol=0)
        if dense.ctrness is not None:
            torch.testing.assert_close(out["bbox_ctrness"], dense.ctrness, atol=1e-6, rtol=0)
    # The holds are taken before the ReLU (RetinaNet's in-place ReLU does not overwrite them).
    assert all(bool((holds.at("cls", k)[0] < 0).any()) for k in range(1, 5))


def test_tower_flattening_finds_one_relu_per_layer():
    teacher, _ = pair("retinanet")
    flat = flat_tower(teacher.model.head.classification_head.conv)
    assert relu_positions(flat) == [1, 3, 5, 7]  # v1: conv, ReLU per layer
    fcos, _ = pair("fcos")
    assert relu_positions(flat_tower(fcos.model.head.regression_head.conv)) == [2, 5, 8, 11]


# ----------------------------------------------------------------------------- the method


@pytest.mark.parametrize("family", ["retinanet", "fcos", "faster_rcnn"])
def test_self_distillation_gives_zero_losses(family):
    teacher, student = pair(family)
    student.model.load_state_dict(teacher.model.state_dict())
    distiller = distiller_for(teacher, student)
    for module in student.modules():  # the teacher's BatchNorm statistics: identical passes
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    images = torch.randn(2, 3, 64, 96)
    losses = kd_losses(distiller, teacher, images)
    assert set(losses) == {"distill/crosskd/cls", "distill/crosskd/reg"}
    assert all(float(v.detach()) < 1e-5 for v in losses.values())


@pytest.mark.parametrize("family, k", [("retinanet", 3), ("fcos", 2), ("retinanet", 0)])
def test_kd_gradients_reach_the_student_up_to_layer_k_and_never_the_teacher(family, k):
    teacher, student = pair(family, seed=3)
    distiller = distiller_for(teacher, student, CrossKDConfig(cross_layer=k))
    losses = kd_losses(distiller, teacher, torch.randn(2, 3, 64, 96))
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    grad = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())  # noqa: E731
    head = student.model.head
    for tower in (head.classification_head.conv, head.regression_head.conv):
        flat = flat_tower(tower)
        relus = relu_positions(flat)
        convs = [flat[relus[j - 1] + 1 if j else 0] for j in range(4)]  # layer j+1's conv
        assert all(grad(c) for c in convs[:k]) and not any(grad(c) for c in convs[k:])
    assert not grad(head.classification_head.cls_logits) and not grad(head.regression_head.bbox_reg)
    assert grad(student.model.backbone.fpn) and grad(student.model.backbone.body)


def test_ignored_and_padded_anchors_get_weight_zero_and_the_normaliser_counts_positives():
    teacher, _ = pair("retinanet", seed=5)
    images = torch.randn(2, 3, 64, 96)
    dense = teacher.extras(images, SIZES, teacher.features(images), [DENSE])[DENSE]
    boxes = [t["boxes"] for t in TARGETS]
    ious = [box_iou(b, a).max(dim=0).values for b, a in zip(boxes, dense.anchors)]
    between = torch.stack([(i >= 0.4) & (i < 0.5) for i in ious])  # max IoU in [0.4, 0.5)
    positive = torch.stack([i >= 0.5 for i in ious])
    assert between.any() and positive.any()
    valid = torch.ones(dense.cls_logits.shape[:2], dtype=torch.bool)
    weight, factor = retinanet_weights(teacher, dense, boxes, valid)
    # Every anchor in the IoU band is ignored, except a box's best anchor (a low-quality match).
    best = torch.stack([(box_iou(b, a) == box_iou(b, a).max(dim=1, keepdim=True).values).any(0)
                        for b, a in zip(boxes, dense.anchors)])
    assert float(weight[between & ~best].sum()) == 0.0
    assert bool((weight[~between] == 1).all())
    expected = sum(max(int((p | (b & bst)).sum()), 1) for p, b, bst in zip(positive, between, best))
    assert factor == expected
    # Padded locations weigh 0 too.
    valid[1, :10] = False
    assert float(retinanet_weights(teacher, dense, boxes, valid)[0][1, :10].sum()) == 0.0


def test_fcos_normaliser_is_the_sum_of_the_positive_centerness_targets():
    teacher, _ = pair("fcos")
    images = torch.randn(2, 3, 64, 96)
    dense = teacher.extras(images, SIZES, teacher.features(images), [DENSE])[DENSE]
    boxes = [t["boxes"] for t in TARGETS]
    matched = assign(teacher, dense.anchors, dense.num_anchors_per_level, boxes)
    expected = 0.0
    for points, gt, idx in zip(dense.anchors, boxes, matched):
        for p, i in zip(points.tolist(), idx.tolist()):
            if i >= 0:
                cx, cy = (p[0] + p[2]) / 2, (p[1] + p[3]) / 2
                l, t, r, b = cx - gt[i][0], cy - gt[i][1], gt[i][2] - cx, gt[i][3] - cy
                expected += math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
    assert expected > 0
    weight, factor = fcos_weights(teacher, dense, boxes, None)
    assert math.isclose(factor, expected, rel_tol=1e-5) and bool((weight == 1).all())
    assert fcos_weights(teacher, dense, [torch.zeros(0, 4)] * 2, None)[1] == 1e-6


def test_different_head_widths_use_a_one_by_one_adapter_that_trains():
    teacher, student = pair("fcos", teacher_width=64, student_width=32, seed=2)
    distiller = distiller_for(teacher, student)
    losses = kd_losses(distiller, teacher, torch.randn(2, 3, 64, 96))
    sum(losses.values()).backward()
    adapters = distiller.method.adapters
    assert adapters is not None and adapters["cls"].weight.shape == (64, 32, 1, 1)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.parameters())
    assert distiller.method.optim.kind == "student"
    assert pair("fcos")[0] is not None and distiller_for(*pair("fcos")).method.adapters is None


def test_faithful_padding_and_align_switches_change_what_is_computed():
    """SIZES pad the second image (60 x 70 in a 64 x 96 batch): FCOS's KD counts the padded
    points only with ``faithful_padding``; without ``align`` the held features go unaligned."""
    teacher, student = pair("fcos", seed=6)
    images = torch.randn(2, 3, 64, 96)
    runs = {}
    for name, section in (("default", CrossKDConfig()), ("faithful", CrossKDConfig(faithful_padding=True)),
                          ("unaligned", CrossKDConfig(align=False))):
        torch.manual_seed(0)
        runs[name] = {k: float(v.detach()) for k, v in kd_losses(distiller_for(teacher, student, section), teacher, images).items()}
    assert runs["faithful"]["distill/crosskd/cls"] > runs["default"]["distill/crosskd/cls"]  # more points, same normaliser
    assert runs["unaligned"]["distill/crosskd/cls"] != runs["default"]["distill/crosskd/cls"]


def test_family_defaults_and_weight_scale():
    teacher, student = pair("retinanet")
    method = build_crosskd(CrossKDConfig(), context(teacher, student, weight_scale=2.0))
    assert (method.cross_layer, method.cls_weight, method.reg_weight, method.reg_loss) == (3, 2.0, 2.0, "giou")
    teacher, student = pair("fcos")
    method = build_crosskd(CrossKDConfig(cls_weight=1.0), context(teacher, student))
    assert (method.cross_layer, method.cls_weight, method.reg_weight, method.reg_loss) == (2, 1.0, 0.75, "iou")


@pytest.mark.parametrize("section, key", [
    (dict(cross_layer=-1), "cross_layer"), (dict(cls_weight=-1.0), "cls_weight"), (dict(reg_loss="smooth_l1"), "reg_loss"),
    (dict(beta=0), "beta"), (dict(reg_weight=float("nan")), "reg_weight"),
    (dict(pkd_weight=-1.0), "pkd_weight"), (dict(pkd_weight=float("inf")), "pkd_weight"),
])
def test_bad_section_values_name_the_key(section, key):
    with pytest.raises(ConfigError, match=rf"distill\.crosskd\.{key}"):
        CrossKDConfig(**section)


@pytest.mark.parametrize("family, teacher_width", [("fcos", 32), ("retinanet", 64), ("faster_rcnn", 32)])
def test_pkd_addon_adds_pearson_imitation_on_every_level(family, teacher_width):
    """``pkd_weight`` (the release's CrossKD + PKD): CrossKD's own terms are unchanged and one more
    term is pkd_weight x weight_scale x the sum over every level of PKD's loss, computed here
    from PKD's pure function on the same features (through the add-on's adapter when the widths
    differ); with 0 the builder returns CrossKD alone."""
    teacher, student = pair(family, teacher_width=teacher_width, seed=3)
    images = torch.randn(2, 3, 64, 96)
    plain = distiller_for(teacher, student)
    assert not isinstance(plain.method, WithPKD)
    ctx = context(teacher, student, weight_scale=0.5)
    method = build_crosskd(CrossKDConfig(pkd_weight=2.0), ctx)
    assert isinstance(method, WithPKD) and method.pkd.levels == tuple(student.level_names)
    distiller = Distiller(student, method, levels=student.level_names, strides=student.strides).train()
    seen = {}
    method.pkd.register_forward_pre_hook(lambda module, args: seen.setdefault("inputs", args[0]))
    torch.manual_seed(0)
    losses = kd_losses(distiller, teacher, images)
    torch.manual_seed(0)
    alone = kd_losses(Distiller(student, method.base, levels=student.level_names, strides=student.strides).train(),
                      teacher, images)
    assert {k: float(v.detach()) for k, v in alone.items()} == pytest.approx(
        {k: float(v.detach()) for k, v in losses.items() if k != "distill/crosskd/pkd"})
    inputs, adapters = seen["inputs"], method.pkd.adapters
    with torch.no_grad():
        students = adapters(inputs.student_levels) if adapters is not None else inputs.student_levels
        expected = sum(pearson_imitation_loss(t, s, v)
                       for t, s, v in zip(inputs.teacher_levels, students, inputs.valid_masks))
    assert len(inputs.teacher_levels) == len(student.level_names)
    assert float(losses["distill/crosskd/pkd"]) > 0
    assert float(losses["distill/crosskd/pkd"]) == pytest.approx(2.0 * 0.5 * float(expected), rel=1e-4)
    losses["distill/crosskd/pkd"].backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_builder_refuses_other_heads_and_layers_past_the_towers():
    teacher, student = pair("fcos", teacher_family="retinanet")
    with pytest.raises(ConfigError, match="teacher must have the student's head"):
        build_crosskd(CrossKDConfig(), context(teacher, student))
    teacher, student = pair("fcos")
    with pytest.raises(ConfigError, match=r"distill\.crosskd\.cross_layer.*0\.\.4"):
        build_crosskd(CrossKDConfig(cross_layer=5), context(teacher, student))
    teacher, student = pair("faster_rcnn", teacher_family="retinanet")
    with pytest.raises(ConfigError, match="teacher must have the student's head"):
        build_crosskd(CrossKDConfig(), context(teacher, student))
    c4 = SimpleNamespace(family="faster_rcnn_c4")
    with pytest.raises(ConfigError, match=r"distill\.crosskd\.cross_layer.*RoI head"):
        build_crosskd(CrossKDConfig(cross_layer=2), context(c4, c4))
    with pytest.raises(ConfigError, match=r"distill\.crosskd\.reg_loss.*l1"):
        build_crosskd(CrossKDConfig(reg_loss="giou"), context(c4, c4))
    teacher, student = pair("retinanet")
    with pytest.raises(ConfigError, match=r"distill\.crosskd\.temperature.*two-stage"):
        build_crosskd(CrossKDConfig(temperature=2.0), context(teacher, student))
    with pytest.raises(ConfigError, match=r"distill\.crosskd\.reg_loss.*giou, iou"):
        build_crosskd(CrossKDConfig(reg_loss="l1"), context(teacher, student))


# ------------------------------------------------------------------ the two-stage branch


def test_two_stage_kl_spec_value():
    kl = roi_kl_loss(torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.0, 1, 0]]), 3.0)
    assert math.isclose(float(kl), 0.3495203, rel_tol=1e-5)
    assert math.isclose(0.5 * float(kl), 0.1747601, rel_tol=1e-5)


def test_two_stage_l1_picks_the_teacher_best_foreground_class_by_hand():
    teacher_logits = torch.tensor([[5.0, 0.0, 1.0], [0.0, 2.0, 0.0]])  # best foreground: class 2, class 1
    teacher_deltas = torch.arange(24.0).view(2, 12)
    cross_deltas = teacher_deltas.clone()
    cross_deltas[0, 8:12] += torch.tensor([1.0, -1.0, 2.0, 0.0])  # row 0, class 2: L1 4
    cross_deltas[0, 4:8] += 100.0  # row 0, class 1: not the teacher's choice
    probs = teacher_logits.softmax(-1)
    w0, w1 = float(probs[0, 2]), float(probs[1, 1])
    expected = w0 * 4.0 / (4 * (w0 + w1))
    assert math.isclose(float(roi_delta_l1_loss(cross_deltas, teacher_logits, teacher_deltas)), expected, rel_tol=1e-6)


@pytest.mark.parametrize("teacher_width", [32, 64])
def test_two_stage_step_reaches_the_student_fpn_and_never_the_teacher(teacher_width):
    teacher, student = pair("faster_rcnn", teacher_width=teacher_width, seed=4)
    distiller = distiller_for(teacher, student)
    method = distiller.method
    assert (method.cls_weight, method.reg_weight, method.temperature) == (0.5, 1.0, 3.0)
    losses = kd_losses(distiller, teacher, torch.randn(2, 3, 64, 96))
    assert set(losses) == {"distill/crosskd/cls", "distill/crosskd/reg"}
    assert all(torch.isfinite(v) and float(v.detach()) > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    grad = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())  # noqa: E731
    assert grad(student.model.backbone.fpn) and not grad(student.model.roi_heads) and not grad(student.model.rpn)
    assert (method.adapters is not None) == (teacher_width != 32)
    if method.adapters is not None:
        assert grad(method.adapters)


# ------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def same_head_teachers(tiny_teacher, tmp_path_factory, tiny_overrides, empty_config):
    """``detector.pt`` of a tiny teacher per family (2 iterations each; RetinaNet: the session's)."""
    from icdistill.cli import main

    paths = {"retinanet": tiny_teacher}
    for family in ("fcos", "faster_rcnn"):
        out = tmp_path_factory.mktemp(f"teacher_{family}")
        assert main(["--no-progress", "train", str(empty_config), "--out", str(out),
                     *[f"--set={s}" for s in tiny_overrides], f"--set=model.family={family}",
                     "--set=solver.max_iter=2", "--set=eval.viz_images=0"]) == 0
        paths[family] = out / "detector.pt"
    return paths


@pytest.mark.parametrize("family, student_width, pkd_weight", [("retinanet", 32, 0), ("fcos", 64, 2),
                                                               ("faster_rcnn", 32, 0)])
def test_crosskd_from_the_cli(family, student_width, pkd_weight, same_head_teachers, tmp_path, tiny_overrides,
                              empty_config):
    """Two iterations of ``icdistill distill`` per family (FCOS with a student head wider than
    the teacher's: the adapter path, and the CrossKD + PKD variant); the KD terms are logged and
    the run is evaluated."""
    metrics, log = cli_distill(tmp_path, same_head_teachers[family], tiny_overrides, empty_config, "crosskd",
                               f"teacher.family={family}", f"model.family={family}",
                               f"model.fpn_channels={student_width}", f"distill.crosskd.pkd_weight={pkd_weight}")
    terms = ("distill/crosskd/cls", "distill/crosskd/reg") + (("distill/crosskd/pkd",) if pkd_weight else ())
    assert "bbox/AP" in metrics
    assert set(terms) <= set(log[-1]) and ("distill/crosskd/pkd" in log[-1]) == bool(pkd_weight)
    assert all(math.isfinite(log[-1][k]) for k in terms)


def test_crosskd_options_from_the_command_line_reach_the_method(tiny_config):
    cfg = tiny_config("distill.method=crosskd", "distill.crosskd.cross_layer=1", "distill.crosskd.cls_weight=2.5",
                      "distill.weight_scale=2")
    teacher, student = pair("retinanet")
    method = build_crosskd(cfg.distill.crosskd, context(teacher, student, weight_scale=cfg.distill.weight_scale))
    assert (method.cross_layer, method.cls_weight, method.reg_weight) == (1, 5.0, 2.0)
    with pytest.raises(ConfigError, match=r"distill\.crosskd\.reg_loss"):
        tiny_config("distill.method=crosskd", "distill.crosskd.reg_loss=smooth_l1")


@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn"])
def test_crosskd_recipes_follow_the_paper_protocols(family):
    assert_recipes_follow_the_paper_protocols("crosskd", family)


def test_crosskd_fcos_coco_recipe_and_bccd_recipe_select_it():
    root = demo_config_path("student").parents[1]
    coco = load_config(root / "coco" / "fcos_R50_1x_crosskd.yaml")
    assert coco.distill.method == "crosskd" and coco.teacher.family == coco.model.family == "fcos"
    bccd = load_config(root / "voc" / "bccd_crosskd.yaml")
    assert bccd.teacher.family == bccd.model.family == "fcos"
