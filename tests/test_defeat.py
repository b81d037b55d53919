"""DeFeat (``defeat``): METHODS_SPEC §7's mask geometry, neck loss and KL checks, padding, the
ramp, gradients, the families (RoI term on two-stage only), and one CLI run."""

import math

import pytest
import torch

from distill_helpers import (
    assert_gradients_reach_only_student_and_method, assert_recipes_follow_the_paper_protocols, cli_distill, inputs_for, method_step,
)
from icdistill.config import load_config
from icdistill.distill.build import build_method
from icdistill.distill.core.context import MethodContext
from icdistill.distill.defeat import DeFeat, DeFeatConfig, decoupled_neck_loss, gt_levels, gt_masks, kl_per_roi, roi_cls_losses
from icdistill.errors import ConfigError

FRCNN_STRIDES = [4, 8, 16, 32, 64]


def test_level_and_mask_geometry_on_p2_p6():
    boxes = torch.tensor([[0.0, 0, 64, 64], [0, 0, 200, 100], [0, 0, 500, 500]])
    assert gt_levels(boxes, 5).tolist() == [0, 1, 3]
    shapes = [(128 // s, 256 // s) for s in FRCNN_STRIDES]
    masks = gt_masks([boxes[:1]], shapes, FRCNN_STRIDES)
    assert int(masks[0].sum()) == 256 and all(int(m.sum()) == 0 for m in masks[1:])
    masks = gt_masks([boxes[1:2]], shapes, FRCNN_STRIDES)
    assert int(masks[1].sum()) == 300 and bool(masks[1][0, :12, :25].all())
    degenerate = gt_masks([torch.tensor([[9.0, 9, 10, 30]])], shapes, FRCNN_STRIDES)  # x range empty on p2
    assert int(degenerate[0].sum()) == 1 and bool(degenerate[0][0, 2, 2])


def test_neck_loss_gives_the_spec_values_and_an_all_ones_mask_no_nan():
    teacher = [torch.zeros(1, 1, 2, 2)]
    adapted = [torch.tensor([[1.0, 2], [3, 4]]).view(1, 1, 2, 2)]
    mask = [torch.tensor([[True, False], [False, False]]).view(1, 2, 2)]
    valid = [torch.ones(1, 2, 2, dtype=torch.bool)]
    fg, bg = decoupled_neck_loss(teacher, adapted, mask, valid)
    assert float(fg) == pytest.approx(0.5) and float(bg) == pytest.approx(29 / 6)
    assert 3 * float(fg) + 12 * float(bg) == pytest.approx(59.5)
    fg, bg = decoupled_neck_loss(teacher, adapted, [torch.ones(1, 2, 2, dtype=torch.bool)], valid)
    assert float(fg) == pytest.approx(30 / 8) and float(bg) == 0.0


def test_background_skips_padding_unless_faithful():
    method = DeFeat(levels=["p3"], student_channels=1, teacher_channels=1, settings=DeFeatConfig(ramp_iters=0))
    with torch.no_grad():
        method.adapters[0].weight.zero_()
        method.adapters[0].weight[0, 0, 1, 1] = 1.0
        method.adapters[0].bias.zero_()
    student = torch.ones(1, 1, 2, 4)
    student[..., 3] = 5.0  # the padded column differs most
    inputs = inputs_for([torch.zeros(1, 1, 2, 4)], [student], [(16, 24)], [8],
                        targets=[{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert float(method(inputs)["distill/defeat/neck_bg"].detach()) == pytest.approx(16 * 6 / 12)
    method.settings = DeFeatConfig(ramp_iters=0, faithful_padding=True)
    assert float(method(inputs)["distill/defeat/neck_bg"].detach()) == pytest.approx(16 * (6 + 50) / 16)


def test_kl_and_the_split_by_teacher_labels():
    z_s, z_t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert float(kl_per_roi(z_s, z_t, 1.0)) == pytest.approx(0.13081, abs=1e-5)
    assert float(kl_per_roi(z_t, z_t, 2.0)) == pytest.approx(0.0, abs=1e-7)
    labels = torch.tensor([2, 0, 0])
    logits_s, logits_t = torch.zeros(3, 3), torch.tensor([[math.log(3.0), 0, 0], [0, 0, 0], [0, 0, 0]])
    fg, bg = roi_cls_losses(logits_s, logits_t, labels, 1.0, 1.0)
    assert float(bg) == pytest.approx(0.0, abs=1e-7) and float(fg) == pytest.approx(float(kl_per_roi(logits_s[:1], logits_t[:1], 1.0)))


def test_weights_ramp_linearly_and_adapters_start_small():
    method = DeFeat(levels=["p3"], student_channels=4, teacher_channels=8)
    assert method.ramp(0) == 0.0 and method.ramp(1000) == 0.5 and method.ramp(5000) == 1.0
    assert float(method.adapters[0].weight.detach().abs().max()) <= 2e-4 and method.optim.kind == "student"


@pytest.mark.parametrize("family", ["faster_rcnn", "mask_rcnn"])
def test_two_stage_with_the_roi_term(family):
    losses, distiller, teacher = method_step("defeat", family, "distill.defeat.roi_cls=true")
    defeat = {k: v for k, v in losses.items() if k.startswith("distill/defeat/")}
    assert set(defeat) == {f"distill/defeat/{t}" for t in ("neck_fg", "neck_bg", "roi_fg", "roi_bg")}
    assert distiller.method.levels == ("p2", "p3", "p4", "p5", "p6")
    assert_gradients_reach_only_student_and_method(distiller, teacher, defeat)
    head = distiller.student.model.roi_heads.box_predictor.cls_score.weight
    assert head.grad is not None and head.grad.abs().sum() > 0


def test_fcos_is_neck_only_and_the_roi_term_there_is_a_config_error():
    losses, distiller, teacher = method_step("defeat", "fcos")
    defeat = {k: v for k, v in losses.items() if k.startswith("distill/defeat/")}
    assert set(defeat) == {"distill/defeat/neck_fg", "distill/defeat/neck_bg"}
    assert_gradients_reach_only_student_and_method(distiller, teacher, defeat)
    dcfg = load_config(None, ["distill.method=defeat", "distill.defeat.roi_cls=true"]).distill
    ctx = MethodContext(teacher, distiller.student, None, distiller.levels, distiller.strides)
    with pytest.raises(ConfigError, match="needs a two-stage student and teacher.*fcos: one-stage"):
        build_method(dcfg, ctx)


def test_defeat_from_the_cli(tmp_path, tiny_teacher, tiny_overrides, empty_config):
    metrics, log = cli_distill(tmp_path, tiny_teacher, tiny_overrides, empty_config, "defeat", "distill.defeat.ramp_iters=2")
    assert "bbox/AP" in metrics
    assert {"distill/defeat/neck_fg", "distill/defeat/neck_bg"} <= set(log[-1])


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet"])
def test_defeat_recipes_follow_the_paper_protocols(family):
    assert_recipes_follow_the_paper_protocols("defeat", family)


def test_defeat_bad_values_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="distill.defeat.ramp_iters"):
        load_config(None, ["distill.method=defeat", "distill.defeat.ramp_iters=-1"])
