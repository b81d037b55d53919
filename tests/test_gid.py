"""GID (``gid``): METHODS_SPEC §6's GISM and relation checks, the feature and response terms,
gradients, the families, and one CLI run."""

import pytest
import torch

from distill_helpers import (
    assert_gradients_reach_only_student_and_method, assert_recipes_follow_the_paper_protocols, cli_distill, inputs_for, method_step, tiny,
)
from icdistill.config import load_config
from icdistill.detectors import freeze_as_teacher
from icdistill.distill.build import build_method
from icdistill.distill.core.context import MethodContext
from icdistill.distill.gid import GID, GIDConfig, HeadView
from icdistill.distill.gid_select import (
    box_levels, gi_boxes, gi_scores, inside_any, pool_instances, relation_loss, select_instances,
)
from icdistill.errors import ConfigError

P_T = torch.tensor([[0.9, 0.1], [0.3, 0.2], [0.5, 0.5]])
P_S = torch.tensor([[0.2, 0.1], [0.35, 0.8], [0.45, 0.5]])


def test_gism_scores_box_sources_and_selection():
    torch.testing.assert_close(gi_scores(P_T, P_S, "paper"), torch.tensor([0.7, 0.6, 0.05]))
    torch.testing.assert_close(gi_scores(P_T, P_S, "repro"), torch.tensor([0.7, 0.5, 0.0]))
    boxes_t = torch.tensor([[0.0, 0, 20, 20], [30, 0, 50, 20], [60, 0, 80, 20]])
    boxes_s = boxes_t + 100
    chosen = gi_boxes(P_T, P_S, boxes_t, boxes_s)  # teacher, student, student (0.5 > 0.5 is false)
    torch.testing.assert_close(chosen, torch.stack([boxes_t[0], boxes_s[1], boxes_s[2]]))
    kept = select_instances(gi_scores(P_T, P_S), boxes_t, (200, 200), top_k=2)  # disjoint boxes
    torch.testing.assert_close(kept, boxes_t[:2])


def test_selection_clips_drops_small_boxes_and_suppresses_overlaps():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    boxes = torch.tensor([[-10.0, -10, 30, 30], [0, 0, 28, 28], [50, 50, 58, 90], [40, 40, 90, 95]])
    kept = select_instances(scores, boxes, (80, 100), min_size=10, nms_iou=0.3, top_k=10)
    # box 0 clipped to [0, 0, 30, 30] suppresses box 1; box 2 is 8 px wide; box 3 is clipped to the image.
    torch.testing.assert_close(kept, torch.tensor([[0.0, 0, 30, 30], [40, 40, 90, 80]]))


def test_relation_is_scale_invariant_and_gives_the_spec_value():
    t = torch.tensor([[0.0], [1.0], [3.0]])
    assert float(relation_loss(t, 2 * t)) == pytest.approx(0.0, abs=1e-6)
    assert float(relation_loss(t, torch.tensor([[0.0], [1.0], [2.0]]))) == pytest.approx(0.125 / 6, rel=1e-4)
    assert float(relation_loss(t[:2], t[:2] + 5)) == 0.0


def test_instances_pool_from_their_detectron2_level():
    boxes = torch.tensor([[0.0, 0, 16, 16], [0, 0, 224, 224], [0, 0, 2000, 2000]])
    assert box_levels(boxes, 3, 7).tolist() == [3, 4, 7]
    feats = [torch.full((1, 2, 16, 16), float(k)) for k in range(3, 8)]  # level k is filled with k
    pooled = pool_instances(feats, [8, 16, 32, 64, 128], [boxes[:2]], output_size=2)
    assert pooled[0].unique().tolist() == [3.0] and pooled[1].unique().tolist() == [4.0]


def test_identical_features_give_zero_feature_and_relation_and_empty_mask_zero_response():
    gid = GID(two_stage=False, levels=["p3"], student_channels=4, teacher_channels=4,
              settings=GIDConfig(adapter=False))
    feats = torch.randn(2, 4, 16, 16)
    inputs = inputs_for([feats], [feats.clone().requires_grad_(True)], [(128, 128)] * 2, [8])
    boxes = [torch.tensor([[0.0, 0, 40, 40], [50, 50, 120, 100], [10, 60, 60, 120]]), torch.zeros(0, 4)]
    feature, relation = gid.instance_losses(inputs, boxes)
    assert float(feature.detach()) == 0.0 and float(relation.detach()) == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(1, 5, 2, requires_grad=True)
    # Point anchors (an FCOS-style head): the points inside GI boxes; none here.
    view = HeadView(logits.sigmoid(), torch.zeros(1, 5, 4), logits, torch.randn(1, 5, 4),
                    [torch.tensor([[2.0, 2, 2, 2]] * 5)], [5])
    cls, reg = gid.response_losses(inputs, view, view, [torch.zeros(0, 4)])
    assert float(cls.detach()) == 0.0 and float(reg.detach()) == 0.0
    assert inside_any(torch.tensor([[5.0, 5], [50, 5]]), torch.tensor([[0.0, 0, 10, 10]])).tolist() == [True, False]


@pytest.mark.parametrize("family", ["fcos", "faster_rcnn", "mask_rcnn"])
def test_one_step_on_each_other_family(family):
    losses, distiller, teacher = method_step("gid", family, "distill.gid.min_box_size=2")
    gid = {k: v for k, v in losses.items() if k.startswith("distill/gid/")}
    assert set(gid) == {f"distill/gid/{t}" for t in ("feature", "relation", "response_cls", "response_reg")}
    assert float(gid["distill/gid/feature"].detach()) > 0 and float(gid["distill/gid/response_cls"].detach()) > 0
    assert distiller.method.optim.kind == "student"
    assert distiller.method.levels == (("p2", "p3", "p4", "p5") if family != "fcos" else
                                       ("p3", "p4", "p5", "p6", "p7"))
    assert_gradients_reach_only_student_and_method(distiller, teacher, gid)


def test_teacher_of_another_family_is_a_config_error():
    teacher, student = freeze_as_teacher(tiny("fcos", 32)), tiny("retinanet", 32)
    dcfg = load_config(None, ["distill.method=gid"]).distill
    ctx = MethodContext(teacher, student, None, student.level_names, student.strides)
    with pytest.raises(ConfigError, match="must be a retinanet too"):
        build_method(dcfg, ctx)


def test_gid_from_the_cli(tmp_path, tiny_teacher, tiny_overrides, empty_config):
    metrics, log = cli_distill(tmp_path, tiny_teacher, tiny_overrides, empty_config, "gid", "distill.gid.min_box_size=2")
    assert "bbox/AP" in metrics
    assert {f"distill/gid/{t}" for t in ("feature", "relation", "response_cls", "response_reg")} <= set(log[-1])


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet"])
def test_gid_recipes_follow_the_paper_protocols(family):
    assert_recipes_follow_the_paper_protocols("gid", family)


def test_gid_bad_values_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="distill.gid.nms_iou"):
        load_config(None, ["distill.method=gid", "distill.gid.nms_iou=1.5"])
