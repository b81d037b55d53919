"""PKD (``pkd``): the Pearson-imitation formula on small hand-computed cases and on independent
ones, padding, the per-family defaults, the adapter, gradients and one step per family."""

import pytest
import torch

from fpn_method_helpers import assert_teacher_gets_no_gradient, direct_step, fake_context
from icdistill.distill.methods.pkd import FAMILY_DEFAULTS, PKDConfig, build_pkd, pearson_imitation_loss, standardise
from distill_helpers import inputs_for
from icdistill.errors import ConfigError


def everywhere(*shape):
    return torch.ones(*shape, dtype=torch.bool)


S1 = torch.tensor([[1.0, 2], [3, 4]]).view(1, 1, 2, 2)
T1 = torch.tensor([[4.0, 3], [2, 1]]).view(1, 1, 2, 2)


def test_anti_correlated_maps_give_three_quarters_of_one_minus_r():
    expected = torch.tensor([-1.161895, -0.387298, 0.387298, 1.161895])
    torch.testing.assert_close(standardise(S1, everywhere(1, 2, 2)).flatten(), expected, atol=1e-5, rtol=0)
    loss = pearson_imitation_loss(T1, S1, everywhere(1, 2, 2))
    # ((n-1)/n)(1 - r) with n = 4, r = -1, less a little for the std's eps.
    assert abs(float(loss) - 1.4999979) < 1e-6 and abs(float(loss) - 0.75 * 2) < 1e-5


def test_affine_teacher_gives_zero_and_two_channels_average():
    assert float(pearson_imitation_loss(2 * S1 + 7, S1, everywhere(1, 2, 2))) < 1e-12
    student = torch.cat([S1, S1], dim=1)
    teacher = torch.cat([S1, T1], dim=1)  # r = +1 and r = -1
    assert abs(float(pearson_imitation_loss(teacher, student, everywhere(1, 2, 2))) - 0.7499989) < 1e-6


def test_batch_pooled_statistics_couple_images_and_image_scope_does_not():
    student = torch.tensor([[0.0, 1], [10, 11]]).view(2, 1, 1, 2)
    teacher = torch.tensor([[0.0, 1], [0, 1]]).view(2, 1, 1, 2)
    assert abs(float(pearson_imitation_loss(teacher, student, everywhere(2, 1, 2))) - 0.6753709) < 1e-6
    assert float(pearson_imitation_loss(teacher, student, everywhere(2, 1, 2), "image")) < 1e-10


def test_random_maps_match_the_closed_form_per_channel():
    torch.manual_seed(3)
    teacher, student = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    n = 2 * 4 * 5
    r = torch.stack([torch.corrcoef(torch.stack([teacher[:, c].flatten(), student[:, c].flatten()]))[0, 1]
                     for c in range(3)])
    expected = ((n - 1) / n * (1 - r)).mean()
    loss = pearson_imitation_loss(teacher, student, everywhere(2, 4, 5))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_padding_is_ignored_by_default_and_counted_when_faithful():
    torch.manual_seed(1)
    teacher, student = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 4, 6)
    valid = everywhere(2, 4, 6).clone()
    valid[1, :, 4:] = False
    changed_t, changed_s = teacher.clone(), student.clone()
    changed_t[1, :, :, 4:] = 50.0
    changed_s[1, :, :, 4:] = -9.0
    base = pearson_imitation_loss(teacher, student, valid)
    torch.testing.assert_close(pearson_imitation_loss(changed_t, changed_s, valid), base)
    full = everywhere(2, 4, 6)
    faithful_change = pearson_imitation_loss(changed_t, changed_s, full) - pearson_imitation_loss(teacher, student, full)
    assert abs(float(faithful_change)) > 1e-3


def test_the_teacher_map_gets_no_gradient_and_the_student_does():
    teacher = torch.randn(2, 4, 3, 3, requires_grad=True)
    student = torch.randn(2, 4, 3, 3, requires_grad=True)
    pearson_imitation_loss(teacher, student, everywhere(2, 3, 3)).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_method_sums_levels_times_the_weight():
    torch.manual_seed(2)
    teachers = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]
    students = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]
    ctx = fake_context("retinanet", 4, 4, ("p3", "p4"), weight_scale=0.5)
    method = build_pkd(PKDConfig(), ctx)
    assert method.levels == ("p3", "p4") and method.adapters is None and method.loss_weight == 10 * 0.5
    losses = method(inputs_for(teachers, students, [(48, 48), (48, 48)], [8, 16]))
    expected = 5 * sum(pearson_imitation_loss(t, s, everywhere(2, t.shape[2], t.shape[3]))
                       for t, s in zip(teachers, students))
    torch.testing.assert_close(losses["distill/pkd/pcc"], expected)


def test_given_distill_levels_replace_the_family_default():
    ctx = fake_context("retinanet", 8, 8, ("p3", "p4", "p5", "p6", "p7"), weight_scale=1.0)
    assert build_pkd(PKDConfig(), ctx).levels == ("p3", "p4", "p5", "p6")
    ctx.levels_configured = True
    assert build_pkd(PKDConfig(), ctx).levels == ("p3", "p4", "p5", "p6", "p7")  # CrossKD's use of PKD


def test_family_defaults_follow_the_original_configs():
    one_stage, two_stage = FAMILY_DEFAULTS["retinanet"], FAMILY_DEFAULTS["faster_rcnn"]
    assert one_stage.levels == ("p3", "p4", "p5", "p6") and one_stage.loss_weight == 10
    assert FAMILY_DEFAULTS["fcos"] == one_stage
    assert two_stage.levels == ("p2", "p3", "p4", "p5") and two_stage.loss_weight == 6
    assert FAMILY_DEFAULTS["faster_rcnn_c4"].levels == ("c4",) and FAMILY_DEFAULTS["faster_rcnn_dc5"].levels == ("c5",)


@pytest.mark.parametrize("family, teacher_family", [
    ("retinanet", None), ("fcos", None), ("faster_rcnn", None), ("retinanet", "fcos"),
])
def test_one_step_on_each_family_reaches_the_student_only(family, teacher_family):
    losses, distiller, teacher = direct_step(build_pkd, PKDConfig(), family, teacher_family=teacher_family)
    assert set(k for k in losses if k.startswith("distill/")) == {"distill/pkd/pcc"}
    assert distiller.method.adapters is not None  # teacher 64 channels, student 32
    assert_teacher_gets_no_gradient(distiller, teacher, {"pcc": losses["distill/pkd/pcc"]})


def test_bad_values_and_levels_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r"distill\.pkd\.norm_scope"):
        PKDConfig(norm_scope="channel")
    with pytest.raises(ConfigError, match=r"distill\.pkd\.loss_weight"):
        PKDConfig(loss_weight=-1.0)
    ctx = fake_context("retinanet", 32, 64, ("p3", "p4"), weight_scale=1.0)
    with pytest.raises(ConfigError, match=r"distill\.pkd\.adapter.*32.*64"):
        build_pkd(PKDConfig(adapter="none"), ctx)
