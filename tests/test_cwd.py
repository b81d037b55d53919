"""CWD (``cwd``): the channel-wise KL on small hand-computed cases and on an independent form,
temperature, padding, the per-family defaults, gradients and one step per family."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from distill_helpers import inputs_for
from fpn_method_helpers import assert_teacher_gets_no_gradient, direct_step, fake_context
from icdistill.distill.methods.cwd import CWDConfig, FAMILY_DEFAULTS, build_cwd, channel_wise_divergence
from icdistill.errors import ConfigError

T1 = torch.tensor([[1.0, 2], [3, 4]]).view(1, 1, 2, 2)
S1 = torch.tensor([[4.0, 3], [2, 1]]).view(1, 1, 2, 2)


def test_single_channel_kl_matches_the_hand_value():
    # Both logsumexps are equal, so KL = Σ p_T·(t − s) = softmax(1, 2, 3, 4)·(−3, −1, 1, 3).
    by_hand = float((torch.softmax(torch.tensor([1.0, 2, 3, 4]), 0) * torch.tensor([-3.0, -1, 1, 3])).sum())
    loss = channel_wise_divergence(T1, S1, None)
    assert abs(float(loss) - 1.985306) < 1e-5 and abs(float(loss) - by_hand) < 1e-5


@pytest.mark.parametrize("temperature, expected", [(1.0, 1.046340), (4.0, 1.277170)])
def test_two_channels_average_and_the_temperature_squared(temperature, expected):
    teacher = torch.cat([T1, torch.zeros(1, 1, 2, 2)], dim=1)
    student = torch.cat([S1, torch.tensor([[1.0, 0], [0, 0]]).view(1, 1, 2, 2)], dim=1)
    assert abs(float(channel_wise_divergence(teacher, student, None, temperature)) - expected) < 1e-5


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_equal_maps_give_zero(temperature):
    x = torch.randn(2, 3, 4, 5)
    assert abs(float(channel_wise_divergence(x, x.clone(), None, temperature))) < 1e-6


def test_random_maps_match_torch_kl_div_per_channel():
    torch.manual_seed(4)
    teacher, student, tau = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), 2.0
    log_p_s = F.log_softmax(student.flatten(2) / tau, dim=-1)
    log_p_t = F.log_softmax(teacher.flatten(2) / tau, dim=-1)
    expected = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum") * tau**2 / (3 * 2)
    torch.testing.assert_close(channel_wise_divergence(teacher, student, None, tau), expected)


def test_padding_leaves_the_distributions_and_faithful_padding_includes_it():
    teacher = torch.tensor([[1.0, 2, 9], [3, 4, -5]]).view(1, 1, 2, 3)
    student = torch.tensor([[4.0, 3, 0], [2, 1, 7]]).view(1, 1, 2, 3).requires_grad_(True)
    valid = torch.ones(1, 2, 3, dtype=torch.bool)
    valid[..., 2] = False
    loss = channel_wise_divergence(teacher, student, valid)
    assert abs(float(loss.detach()) - 1.985306) < 1e-5
    assert abs(float(channel_wise_divergence(teacher, student.detach(), None)) - 6.992253) < 1e-5
    other_t, other_s = teacher.clone(), student.detach().clone()
    other_t[..., 2], other_s[..., 2] = 100.0, -100.0
    torch.testing.assert_close(channel_wise_divergence(other_t, other_s, valid), loss.detach())
    loss.backward()
    assert torch.isfinite(student.grad).all() and float(student.grad[..., 2].abs().sum()) == 0.0


def test_the_teacher_map_gets_no_gradient():
    teacher = torch.randn(2, 4, 3, 3, requires_grad=True)
    student = torch.randn(2, 4, 3, 3, requires_grad=True)
    channel_wise_divergence(teacher, student, torch.ones(2, 3, 3, dtype=torch.bool)).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_method_sums_levels_times_the_weight_and_defaults_by_family():
    torch.manual_seed(5)
    teachers = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]
    students = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]
    ctx = fake_context("faster_rcnn", 4, 4, ("p2", "p3"), weight_scale=2.0)
    method = build_cwd(CWDConfig(), ctx)
    assert method.loss_weight == 10 * 2.0 and method.adapters is None
    losses = method(inputs_for(teachers, students, [(24, 24), (24, 24)], [4, 8], names=["p2", "p3"]))
    expected = 20 * sum(channel_wise_divergence(t, s, None) for t, s in zip(teachers, students))
    torch.testing.assert_close(losses["distill/cwd/kl"], expected)
    assert FAMILY_DEFAULTS["retinanet"].levels == ("p3", "p4", "p5", "p6") and FAMILY_DEFAULTS["retinanet"].loss_weight == 5
    assert FAMILY_DEFAULTS["mask_rcnn"].levels == ("p2", "p3", "p4", "p5", "p6")
    assert FAMILY_DEFAULTS["faster_rcnn_dc5"].levels == ("c5",)


@pytest.mark.parametrize("family", ["retinanet", "fcos", "faster_rcnn"])
def test_one_step_on_each_family_reaches_the_student_only(family):
    losses, distiller, teacher = direct_step(build_cwd, CWDConfig(), family)
    assert {k for k in losses if k.startswith("distill/")} == {"distill/cwd/kl"}
    assert len(distiller.method.adapters.convs) == len(distiller.method.levels)  # 32 -> 64 channels
    assert_teacher_gets_no_gradient(distiller, teacher, {"kl": losses["distill/cwd/kl"]})
    assert all(c.weight.grad is not None for c in distiller.method.adapters.convs)


def test_bad_values_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r"distill\.cwd\.temperature"):
        CWDConfig(temperature=0.0)
    with pytest.raises(ConfigError, match=r"distill\.cwd\.adapter"):
        CWDConfig(adapter="3x3")


def test_head_class_maps_drop_the_background_and_keep_each_anchor_and_class_in_place():
    from icdistill.detectors.extras import DenseOutputs
    from icdistill.distill.methods.cwd import head_class_maps

    # Two levels, 2x2 and 1x1 locations, A = 2 anchors, K = 3 slots (background + 2 classes);
    # logit value = 1000·level + 100·location + 10·anchor + slot.
    rows = [1000 * lvl + 100 * loc + 10 * a + k for lvl, locs in ((0, 4), (1, 1))
            for loc in range(locs) for a in range(2) for k in range(3)]
    logits = torch.tensor(rows, dtype=torch.float32).view(1, 10, 3)
    dense = DenseOutputs(logits, torch.zeros(1, 10, 4), None, [torch.zeros(10, 4)], [8, 2], None)
    fine, coarse = head_class_maps(dense, [(2, 2), (1, 1)])
    assert fine.shape == (1, 4, 2, 2) and coarse.shape == (1, 4, 1, 1)
    # channel = anchor·C + (class − 1); location (y, x) = index y·W + x.
    assert float(fine[0, 1 * 2 + 0, 1, 0]) == 100 * 2 + 10 * 1 + 1
    assert float(coarse[0, 0 * 2 + 1, 0, 0]) == 1000 + 2
    assert not any(int(v) % 10 == 0 for v in fine.flatten().tolist())  # no background slot


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_head_variant_of_a_teacher_equal_to_the_student_is_zero_and_trains_the_head(family):
    import copy

    from distill_helpers import PRIOR, SIZES, targets_for, tiny
    from icdistill.detectors import freeze_as_teacher
    from icdistill.distill.core.distiller import Distiller

    torch.manual_seed(0)
    student = tiny(family, 32)
    teacher = freeze_as_teacher(copy.deepcopy(student))
    ctx = SimpleNamespace(teacher=teacher, student=student, levels=student.level_names, weight_scale=1.0,
                          levels_configured=False)
    method = build_cwd(CWDConfig(location="cls_head"), ctx)
    assert method.loss_weight == 5.0 and method.levels == ("p3", "p4", "p5", "p6", "p7")
    distiller = Distiller(student, method, levels=student.level_names, strides=student.strides).train()
    for layer in student.modules():  # the teacher's batch norms use running statistics: so do these
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.eval()
    losses = distiller(torch.randn(2, 3, 64, 96), SIZES, targets_for(family), teacher=teacher, iteration=100)
    assert abs(float(losses["distill/cwd/kl"].detach())) < 1e-5
    # A student that differs from its teacher gets a gradient into its classification head.
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    losses = distiller(torch.randn(2, 3, 64, 96), SIZES, targets_for(family), teacher=teacher, iteration=100)
    losses["distill/cwd/kl"].backward()
    head = [p for n, p in student.named_parameters() if "cls_logits" in n]
    assert float(losses["distill/cwd/kl"].detach()) > 0 and any(p.grad.abs().sum() > 0 for p in head)
    assert all(p.grad is None for p in teacher.parameters())


def test_head_variant_on_a_two_stage_detector_is_a_config_error_naming_the_key():
    two_stage = SimpleNamespace(family="faster_rcnn", supported_extras=frozenset({"rpn"}), out_channels=32)
    ctx = SimpleNamespace(teacher=two_stage, student=two_stage, levels=("p2",), weight_scale=1.0,
                          levels_configured=False)
    with pytest.raises(ConfigError, match=r"distill\.cwd\.location.*faster_rcnn"):
        build_cwd(CWDConfig(location="cls_head"), ctx)
