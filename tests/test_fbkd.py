"""Zhang & Ma 2021 (``fbkd``): METHODS_SPEC §5's numeric checks, padding, gradients, the
families, and one CLI run."""

import math
from types import SimpleNamespace

import pytest
import torch

from distill_helpers import (
    assert_gradients_reach_only_student_and_method, assert_recipes_follow_the_paper_protocols, cli_distill, inputs_for, method_step,
)
from icdistill.config import load_config
from icdistill.distill.build import build_method
from icdistill.distill.core.context import MethodContext
from icdistill.distill.fbkd import COLUMNS, FBKD, NonLocal2d, channel_mask, spatial_mask
from icdistill.errors import ConfigError


def identity_fbkd(column: str, channels: int = 2) -> FBKD:
    """FBKD on one level with identity A, Lin and A_nl, a 3x3 conv that copies its centre, and
    the non-local blocks at their (zero-BN) init."""
    method = FBKD(levels=["p3"], student_channels=channels, teacher_channels=channels, column=COLUMNS[column])
    parts = method.parts[0]
    eye = torch.eye(channels)
    with torch.no_grad():
        for conv in (parts.adapter, parts.nl_adapter):
            conv.weight.copy_(eye.view(channels, channels, 1, 1))
            conv.bias.zero_()
        parts.channel_fc.weight.copy_(eye)
        parts.channel_fc.bias.zero_()
        parts.spatial_conv.weight.zero_()
        parts.spatial_conv.weight[0, 0, 1, 1] = 1.0
        parts.spatial_conv.bias.zero_()
    return method


def test_masks_uniform_and_two_position_softmax():
    valid = torch.ones(1, 3, 4, dtype=torch.bool)
    feat = -torch.ones(1, 5, 3, 4) * 0.7  # uniform |F|
    torch.testing.assert_close(spatial_mask(feat, valid, 0.1), torch.ones(1, 3, 4))
    torch.testing.assert_close(channel_mask(feat, valid, 0.1), torch.ones(1, 5))
    two = torch.tensor([0.0, 0.1]).view(1, 1, 1, 2)  # G^S = [0, 0.1], T = 0.1
    ms = spatial_mask(two, torch.ones(1, 1, 2, dtype=torch.bool), 0.1)
    torch.testing.assert_close(ms.flatten(), torch.tensor([0.5379, 1.4621]), atol=1e-4, rtol=0)


def test_padding_gets_mask_zero_and_the_valid_tokens_share_their_count():
    feat = torch.rand(1, 3, 2, 4)
    valid = torch.zeros(1, 2, 4, dtype=torch.bool)
    valid[:, :, :3] = True
    ms = spatial_mask(feat, valid, 0.5)
    assert float(ms[..., 3].abs().sum()) == 0.0
    assert math.isclose(float(ms.sum()), 6.0, rel_tol=1e-5)


@pytest.mark.parametrize("column, total", [("one", 0.084317), ("two", 0.014053)])
def test_constructed_features_give_the_spec_values(column, total):
    method = identity_fbkd(column)
    t, s = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    losses = method(inputs_for([t], [s], [(16, 16)], [8]))
    col = COLUMNS[column]
    torch.testing.assert_close(losses["distill/fbkd/am"], torch.tensor(col.am_weight * math.sqrt(8)))
    torch.testing.assert_close(losses["distill/fbkd/at"], torch.tensor(col.at_weight * (math.sqrt(2) + 2)))
    torch.testing.assert_close(losses["distill/fbkd/nld"], torch.tensor(col.nld_weight * math.sqrt(8)))
    assert math.isclose(float(sum(losses.values()).detach()), total, rel_tol=1e-4)


def test_identical_teacher_and_student_give_zero_and_finite_gradients():
    method = identity_fbkd("one", channels=4)
    feats = torch.randn(2, 4, 6, 6)
    student = feats.clone().requires_grad_(True)
    losses = method(inputs_for([feats], [student], [(48, 48), (40, 44)], [8]))
    assert all(float(v.detach()) == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(student.grad).all()


def test_non_local_block_is_identity_at_init_and_handles_tiny_maps():
    block = NonLocal2d(8, 2, pool=8).train()
    x = torch.randn(1, 8, 1, 1)  # batch 1 on a 1x1 map: no batch statistics
    torch.testing.assert_close(block(x), x)
    y = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(block(y), y)


@pytest.mark.parametrize("family", ["faster_rcnn", "mask_rcnn", "fcos"])
def test_one_step_on_each_other_family(family):
    losses, distiller, teacher = method_step("fbkd", family)
    method = distiller.method
    assert method.optim.kind == "student"
    if family != "fcos":  # the two-stage column: p2-p5, no channel mask
        assert method.levels == ("p2", "p3", "p4", "p5") and not method.column.channel_mask
    else:
        assert method.levels == ("p3", "p4", "p5", "p6", "p7") and method.column.temperature == 0.1
    fbkd = {k: v for k, v in losses.items() if k.startswith("distill/fbkd/")}
    assert set(fbkd) == {"distill/fbkd/am", "distill/fbkd/at", "distill/fbkd/nld"}
    assert_gradients_reach_only_student_and_method(distiller, teacher, fbkd)
    # The teacher-side non-local block is the method's and trains.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parts[0].teacher_nl.parameters())


@pytest.mark.parametrize("method, missing", [("gid", "rpn"), ("chen2017", "roi_samples, rpn")])
def test_a_detector_without_the_extras_a_method_needs_is_a_config_error_naming_them(method, missing):
    """Support follows capability: a two-stage adapter providing no extras cannot run a method
    that needs some, and the error names what is missing; one needing none builds."""
    bare = SimpleNamespace(family="faster_rcnn_c4", out_channels=1024, supported_extras=frozenset())
    ctx = MethodContext(bare, bare, None, ("c4",), (16,))
    with pytest.raises(ConfigError, match=rf"needs the extras {missing} .*faster_rcnn_c4 adapter provides only its features"):
        build_method(load_config(None, [f"distill.method={method}"]).distill, ctx)


def test_fbkd_from_the_cli(tmp_path, tiny_teacher, tiny_overrides, empty_config):
    metrics, log = cli_distill(tmp_path, tiny_teacher, tiny_overrides, empty_config, "fbkd")
    assert "bbox/AP" in metrics
    assert {"distill/fbkd/am", "distill/fbkd/at", "distill/fbkd/nld"} <= set(log[-1])


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet"])
def test_fbkd_recipes_follow_the_paper_protocols(family):
    assert_recipes_follow_the_paper_protocols("fbkd", family)


def test_fbkd_bad_values_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="distill.fbkd.temperature"):
        load_config(None, ["distill.method=fbkd", "distill.fbkd.temperature=0"])
