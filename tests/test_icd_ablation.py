"""distill.icd.ablation_weights: ICD's loss with uniform or GT-box token weights (the main ablation)."""

import pytest
import torch

from icdistill.config import load_config
from icdistill.distill.icd.ablation import ablation_weights, gt_box_weights, uniform_weights
from icdistill.distill.core.inputs import valid_token_mask
from icdistill.distill.icd.losses import attention_weighted_distill_loss
from icdistill.distill.icd.sampling import build_instances
from icdistill.errors import ConfigError
from test_icd import make_inputs, make_module, make_prior

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def instances(boxes_per_image, sizes):
    targets = [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "labels": torch.zeros(len(b), dtype=torch.long)}
               for b in boxes_per_image]
    return build_instances(targets, sizes, make_prior(), fake_ratio=2, max_instances=50, jitter=0.0)


def valid_tokens(shapes, strides, sizes):
    return torch.cat([m.flatten(1) for m in valid_token_mask(shapes, strides, sizes, "cpu")], dim=1)


def test_uniform_weights_are_equal_on_valid_tokens_and_sum_like_the_attention():
    sizes, shapes, strides = [(64, 32), (64, 64), (32, 32)], [(8, 8), (4, 4)], [8, 16]
    inst = instances([[[0, 0, 10, 10], [5, 5, 20, 30]], [[1, 1, 9, 9]], []], sizes)
    valid = valid_tokens(shapes, strides, sizes)
    w = uniform_weights(valid, inst.is_real, num_heads=4)
    assert w.shape == (3, 4, valid.shape[1])
    for b, n in enumerate([2, 1, 0]):
        assert w[b].sum(dim=-1).tolist() == pytest.approx([float(n)] * 4)  # Σ_s w = n_b per head
        on = w[b, :, valid[b]]
        assert torch.all(on == on[0, 0]) and torch.all(w[b, :, ~valid[b]] == 0)
    assert valid[0].sum() < valid[1].sum()  # the first image is narrower: padding excluded


def test_gt_box_weights_are_one_normalised_mass_per_instance_and_zero_outside_the_boxes():
    sizes, shapes, strides = [(64, 64)], [(8, 8)], [8]
    # cells of 8 px, centres at 4, 12, 20, ...: the box [8, 8, 24, 24] holds the 2x2 centres 12, 20
    inst = instances([[[8, 8, 24, 24], [41, 41, 43, 43]]], sizes)
    w = gt_box_weights(inst, valid_tokens(shapes, strides, sizes), shapes, strides, sizes, num_heads=2)
    grid = w[0, 0].reshape(8, 8).clone()
    assert torch.equal(w[0, 0], w[0, 1])  # the same for every head
    assert grid[1:3, 1:3].flatten().tolist() == pytest.approx([0.25] * 4)
    # a box smaller than a cell: the cell holding its centre, (5, 5), carries its whole mass
    assert grid[5, 5].item() == pytest.approx(1.0)
    grid[1:3, 1:3] = 0
    grid[5, 5] = 0
    assert torch.all(grid == 0)  # nothing outside the boxes
    assert w[0].sum(dim=-1).tolist() == pytest.approx([2.0, 2.0])  # Σ_s w = n_b, like the attention
    # fake instances carry no weight: the same boxes without their fakes give the same weights
    assert inst.valid.sum() > inst.is_real.sum()


def test_gt_box_weights_span_levels_and_skip_padding():
    sizes, shapes, strides = [(32, 64)], [(8, 8), (4, 4)], [8, 16]  # padded to 64 x 64
    inst = instances([[[0, 0, 64, 32]]], sizes)  # the whole image
    valid = valid_tokens(shapes, strides, sizes)
    w, valid = ablation_weights("gt_box", inst, valid, shapes, strides, sizes, num_heads=1)[0, 0], valid[0]
    assert torch.all(w[~valid] == 0) and torch.all(w[valid] > 0)
    assert w.sum().item() == pytest.approx(1.0)
    per_level = w[:64][valid[:64]], w[64:][valid[64:]]  # each level's tokens share one weight
    assert all(v.unique().numel() == 1 for v in per_level)


def test_icd_module_with_ablation_weights_changes_only_the_distillation_weighting():
    teacher, student, targets, sizes, strides = make_inputs()
    icd = make_module()
    ablated = make_module(ablation_weights="uniform")
    ablated.load_state_dict(icd.state_dict())
    torch.manual_seed(1)
    ref = icd.losses(teacher, student, targets, sizes, strides)
    torch.manual_seed(1)
    out = ablated.losses(teacher, student, targets, sizes, strides)
    for key in ("distill/icd/idf", "distill/icd/reg"):  # the auxiliary task is untouched
        assert out[key].item() == pytest.approx(ref[key].item(), abs=1e-6)
    # the feature loss is the same loss with uniform weights on valid tokens
    tokens = icd.teacher_tokens(teacher, strides, sizes)
    _, values = icd.keys_and_values(icd.layers[0], tokens)
    weights = uniform_weights(tokens.valid, torch.tensor([[True], [True]]), icd.num_heads)
    student_tokens = torch.cat([s.flatten(2).transpose(1, 2) for s in student], dim=1)
    expected = attention_weighted_distill_loss(icd.adapters[0](student_tokens), values.detach(), weights, icd.num_heads)
    assert out["distill/icd/feature"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["distill/icd/feature"].backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_ablation_weights_config_key():
    icd = ROOT / "configs" / "demo" / "icd.yaml"
    assert load_config(icd).distill.icd.ablation_weights is None
    assert load_config(icd, ["distill.icd.ablation_weights=gt_box"]).distill.icd.ablation_weights == "gt_box"
    with pytest.raises(ConfigError, match="ablation_weights.*uniform, gt_box"):
        load_config(icd, ["distill.icd.ablation_weights=box"])
    with pytest.raises(ValueError, match="valid: None, uniform, gt_box"):
        make_module(ablation_weights="box")
