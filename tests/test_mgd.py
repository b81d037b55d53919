"""MGD (``mgd``): the masked generation loss on constructed blocks, the random mask's
statistics and meaning, padding, the per-family defaults, gradients and one step per family."""

import pytest
import torch

from distill_helpers import inputs_for
from fpn_method_helpers import assert_teacher_gets_no_gradient, direct_step, fake_context
from icdistill.distill.methods.mgd import (
    FAMILY_DEFAULTS, MGDConfig, build_mgd, generation_block, keep_mask, masked_generation_loss,
)
from icdistill.errors import ConfigError


def relu_block(channels: int = 1):
    """Both convs copy their centre tap, biases 0: G(x) = ReLU(x)."""
    block = generation_block(channels)
    with torch.no_grad():
        for conv in (block[0], block[2]):
            conv.weight.zero_()
            conv.weight[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
            conv.bias.zero_()
    return block


def zero_block(channels: int):
    block = generation_block(channels)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
    return block


def test_identity_block_regenerates_the_kept_cells():
    student = torch.tensor([[1.0, 2], [3, 4]]).view(1, 1, 2, 2)
    keep = torch.tensor([[1.0, 0], [0, 1]]).view(1, 1, 2, 2)
    loss = masked_generation_loss(torch.ones(1, 1, 2, 2), student, keep, relu_block(), None)
    assert abs(2e-5 * float(loss.detach()) - 2.2e-4) < 1e-12  # G = [[1, 0], [0, 4]]: 0 + 1 + 1 + 9 = 11


def test_zero_block_costs_the_teacher_energy_over_the_batch():
    teacher = torch.ones(2, 2, 2, 2)
    loss = masked_generation_loss(teacher, torch.randn(2, 2, 2, 2), torch.ones(2, 1, 2, 2), zero_block(2), None)
    assert abs(2e-5 * float(loss.detach()) - 1.6e-4) < 1e-12  # Σ T² = 16, / N = 2


def test_mask_drops_the_ratio_of_positions_for_every_channel_alike():
    generator = torch.Generator().manual_seed(0)
    keep = keep_mask(torch.rand(1, 1, 200, 200, generator=generator), 0.65)
    assert abs(1 - float(keep.mean()) - 0.65) < 0.01
    assert keep.shape[1] == 1  # broadcast over channels: one mask for all of them


def test_mask_keeps_a_draw_below_one_minus_ratio_and_drops_one_above():
    draws = torch.tensor([0.30, 0.40]).view(1, 1, 1, 2)
    assert keep_mask(draws, 0.65).flatten().tolist() == [1.0, 0.0]


def test_padded_teacher_cells_do_not_count_by_default():
    torch.manual_seed(6)
    teacher, student = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 4, 6)
    keep, block = keep_mask(torch.rand(2, 1, 4, 6), 0.5), generation_block(3)
    valid = torch.ones(2, 4, 6, dtype=torch.bool)
    valid[0, 3:, :] = False
    changed = teacher.clone()
    changed[0, :, 3:, :] = 1e3
    base = masked_generation_loss(teacher, student, keep, block, valid)
    torch.testing.assert_close(masked_generation_loss(changed, student, keep, block, valid), base)
    assert float(masked_generation_loss(changed, student, keep, block, None).detach()) > float(base.detach()) + 1.0


def test_gradients_reach_the_student_and_the_block_but_not_the_teacher():
    teacher = torch.randn(2, 4, 3, 3, requires_grad=True)
    student = torch.randn(2, 4, 3, 3, requires_grad=True)
    block = generation_block(4)
    masked_generation_loss(teacher, student, torch.ones(2, 1, 3, 3), block, None).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


def test_method_draws_a_fresh_mask_each_step_and_weights_by_alpha():
    ctx = fake_context("retinanet", 4, 4, ("p3", "p4"), weight_scale=1.0)
    method = build_mgd(MGDConfig(), ctx)
    assert method.loss_weight == 2e-5 and method.mask_ratio == 0.65 and len(method.generation) == 2
    teachers, students = [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)], [torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    inputs = inputs_for(teachers, students, [(64, 64), (64, 64)], [8, 16])
    torch.manual_seed(0)
    first = method(inputs)["distill/mgd/gen"]
    torch.manual_seed(0)
    again = method(inputs)["distill/mgd/gen"]
    torch.testing.assert_close(first, again)  # the run's seeded random stream
    assert float(method(inputs)["distill/mgd/gen"].detach()) != float(first.detach())


def test_family_defaults_follow_the_original_configs():
    assert (FAMILY_DEFAULTS["retinanet"].loss_weight, FAMILY_DEFAULTS["retinanet"].mask_ratio) == (2e-5, 0.65)
    assert FAMILY_DEFAULTS["fcos"].levels == ("p3", "p4", "p5", "p6", "p7")
    assert (FAMILY_DEFAULTS["faster_rcnn"].loss_weight, FAMILY_DEFAULTS["faster_rcnn"].mask_ratio) == (5e-7, 0.45)
    assert FAMILY_DEFAULTS["mask_rcnn"].levels == ("p2", "p3", "p4", "p5")
    assert FAMILY_DEFAULTS["faster_rcnn_c4"].levels == ("c4",)


def test_narrow_generation_block_has_the_hidden_width():
    block = generation_block(16, 4)
    assert block[0].out_channels == 4 and block[2].in_channels == 4 and block[2].out_channels == 16


@pytest.mark.parametrize("family", ["retinanet", "fcos", "faster_rcnn"])
def test_one_step_on_each_family_trains_the_blocks_and_not_the_teacher(family):
    losses, distiller, teacher = direct_step(build_mgd, MGDConfig(), family)
    assert {k for k in losses if k.startswith("distill/")} == {"distill/mgd/gen"}
    assert_teacher_gets_no_gradient(distiller, teacher, {"gen": losses["distill/mgd/gen"]})
    for block in distiller.method.generation:  # (a fully masked 1x1 level trains the biases only)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_bad_values_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r"distill\.mgd\.mask_ratio"):
        MGDConfig(mask_ratio=1.0)
    with pytest.raises(ConfigError, match=r"distill\.mgd\.generation_channels"):
        MGDConfig(generation_channels=0)
