"""ICD module against ICD_SPEC §9 and its gradient rules (§6, §7)."""

import math

import pytest
import torch

from icdistill.distill.icd.module import ICDModule, flatten_levels, valid_token_mask
from icdistill.distill.icd.losses import (
    attention_weighted_distill_loss,
    instance_descriptor,
    regression_targets,
    scale_bins,
    level_position_encoding,
    sine_encoding,
)
from icdistill.distill.icd.sampling import (
    PriorTensors,
    build_instances,
    jitter_centres,
    num_instances,
    sample_fake_instances,
)


def make_prior(num_classes=3):
    return PriorTensors(
        freq=torch.tensor([3.0, 1.0, 0.5])[:num_classes],
        w_mean=torch.tensor([0.1, 0.3, 0.05])[:num_classes],
        w_std=torch.tensor([0.02, 0.05, 0.01])[:num_classes],
        h_mean=torch.tensor([0.2, 0.15, 0.05])[:num_classes],
        h_std=torch.tensor([0.03, 0.05, 0.01])[:num_classes],
    )


def make_module(**kwargs):
    args = dict(num_classes=3, teacher_channels=32, student_channels=16, prior=make_prior(), loss_weight=1.0)
    args.update(kwargs)
    return ICDModule(**args)


def make_inputs(batch_sizes=((96, 128), (128, 64)), strides=(8, 16, 32), ct=32, cs=16, pad=(128, 128)):
    torch.manual_seed(0)
    teacher = [torch.randn(len(batch_sizes), ct, pad[0] // s, pad[1] // s) for s in strides]
    student = [torch.randn(len(batch_sizes), cs, pad[0] // s, pad[1] // s, requires_grad=True) for s in strides]
    targets = [
        {"boxes": torch.tensor([[10.0, 10, 50, 40]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 5, 30, 60], [20, 30, 60, 120], [0, 0, 10, 10]]), "labels": torch.tensor([0, 2, 1])},
    ][: len(batch_sizes)]
    return teacher, student, targets, list(batch_sizes), list(strides)


# ---- §9 numbers -------------------------------------------------------------------------------

def test_descriptor_length_for_80_classes():
    labels = torch.zeros(1, 2, dtype=torch.long)
    e = instance_descriptor(labels, torch.rand(1, 2, 2), torch.full((1, 2, 2), 100.0), num_classes=80)
    assert e.shape == (1, 2, 346)


@pytest.mark.parametrize("n,cap,expected", [(10, 300, 60), (20, 300, 120), (60, 300, 300), (0, 300, 1), (20, 100, 100), (120, 100, 120)])
def test_instance_counts(n, cap, expected):
    assert num_instances(n, fake_ratio=5, max_instances=cap) == expected


def test_sine_code_of_zero():
    code = sine_encoding(torch.tensor(0.0))
    assert torch.equal(code, torch.cat([torch.zeros(64), torch.ones(64)]))


def test_scale_bin_edges():
    sizes = torch.tensor([10.0, 63.9, 64.0, 127.9, 128.0, 255.9, 256.0, 511.9, 512.0, 5000.0])
    assert scale_bins(sizes).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_token_counts_at_coco_size():
    pad = (800, 1344)
    one_stage = [(math.ceil(pad[0] / s), math.ceil(pad[1] / s)) for s in (8, 16, 32, 64, 128)]
    two_stage = [(math.ceil(pad[0] / s), math.ceil(pad[1] / s)) for s in (4, 8, 16, 32, 64)]
    assert sum(h * w for h, w in one_stage) == 22400
    assert sum(h * w for h, w in two_stage) == 89523


def test_regression_target_identities():
    torch.manual_seed(1)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 0.02, 0.3], [0.6, 0.1, 0.99, 0.2]]).repeat(200, 1)
    centres = jitter_centres(boxes, 0.3)
    target = regression_targets(boxes, centres)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    torch.testing.assert_close(target[:, 0] / w + target[:, 2] / w, torch.ones(600))
    torch.testing.assert_close(target[:, 1] / h + target[:, 3] / h, torch.ones(600))
    ratios = torch.stack([target[:, 0] / w, target[:, 2] / w, target[:, 1] / h, target[:, 3] / h])
    assert ratios.min() > 0.2 - 1e-6 and ratios.max() < 0.8 + 1e-6


def test_distill_weights_sum_to_real_instance_count():
    icd = make_module()
    teacher, _, targets, sizes, strides = make_inputs()
    tokens = icd.teacher_tokens(teacher, strides, sizes)
    inst = icd.instances(targets, sizes)
    query = icd.queries(inst)
    layer = icd.layers[0]
    keys, _ = icd.keys_and_values(layer, tokens)
    w = layer.real_instance_weights(query, keys, tokens.valid, inst.is_real, chunk=2)
    torch.testing.assert_close(w.sum(-1), torch.tensor([[1.0] * 8, [3.0] * 8]))
    assert float(w[~tokens.valid[:, None, :].expand_as(w)].abs().max()) == 0.0
    # the chunked accumulation equals the straightforward all-query computation
    probs = layer.attention_probs(query, keys, tokens.valid)
    full = (probs * inst.is_real[:, None, :, None]).sum(dim=2)
    torch.testing.assert_close(w, full, rtol=1e-5, atol=1e-6)


def test_identical_tokens_give_zero_loss():
    icd = make_module(student_channels=32, teacher_channels=32, hidden_dim=32, num_heads=4)
    teacher, _, targets, sizes, strides = make_inputs(ct=32)
    with torch.no_grad():  # adapter == the decoder's value projection
        icd.adapters[0].weight.copy_(icd.layers[0].v_proj.weight)
        icd.adapters[0].bias.copy_(icd.layers[0].v_proj.bias)
    losses = icd.losses(teacher, [t.clone() for t in teacher], targets, sizes, strides)
    assert float(losses["distill/icd/feature"]) == 0.0


def test_uncorrelated_features_give_about_two_lambda_and_ln2():
    icd = make_module(loss_weight=6.0)
    teacher, student, targets, sizes, strides = make_inputs()
    losses = icd.losses(teacher, student, targets, sizes, strides)
    assert abs(float(losses["distill/icd/feature"]) / 6.0 - 2.0) < 0.3
    assert abs(float(losses["distill/icd/idf"]) - math.log(2)) < 0.15


def test_per_image_normalisation():
    # B=2, N=(1,3): each image's loss is its attention-weighted mean error; L = λ(e1 + e2)/2.
    torch.manual_seed(0)
    batch, heads, tokens, dim = 2, 2, 5, 4
    student, teacher = torch.randn(batch, tokens, dim), torch.randn(batch, tokens, dim)
    weights = torch.rand(batch, heads, tokens)
    weights[0] /= weights[0].sum(-1, keepdim=True)  # one real instance
    weights[1] = 3 * weights[1] / weights[1].sum(-1, keepdim=True)  # three real instances
    loss = attention_weighted_distill_loss(student, teacher, weights, heads, loss_weight=3.0)
    ln = lambda x: torch.nn.functional.layer_norm(x.view(batch, tokens, heads, 2), (2,))  # noqa: E731
    delta = (ln(student) - ln(teacher)).pow(2).mean(-1).permute(0, 2, 1)  # [B, H, S]
    e = [(weights[b] * delta[b]).sum(-1) / weights[b].sum(-1) for b in range(batch)]  # per head
    expected = 3.0 * (e[0].mean() + e[1].mean()) / 2
    torch.testing.assert_close(loss, expected)
    # an image without real instances contributes zero but still counts in B
    weights[1] = 0
    loss = attention_weighted_distill_loss(student, teacher, weights, heads, loss_weight=3.0)
    torch.testing.assert_close(loss, 3.0 * e[0].mean() / 2)


# ---- masks, encodings, sampling -----------------------------------------------------------------

def test_valid_token_mask_uses_ceil_per_image():
    masks = valid_token_mask([(13, 21)], [64], [(800, 1333), (100, 65)], "cpu")
    assert masks[0][0].sum() == 13 * 21
    assert masks[0][1].sum() == 2 * 2


def test_flatten_levels_is_row_major_and_concatenated():
    a = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    b = torch.arange(2 * 1 * 1 * 2, dtype=torch.float32).view(2, 1, 1, 2) + 100
    tokens = flatten_levels([a, b])
    assert tokens.shape == (2, 8, 1)
    assert tokens[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 100, 101]


def test_fake_sampler_matches_prior():
    prior = make_prior()
    gen = torch.Generator().manual_seed(0)
    boxes, labels = sample_fake_instances(prior, 60000, gen)
    freq = torch.bincount(labels, minlength=3).float() / 60000
    torch.testing.assert_close(freq, prior.freq / prior.freq.sum(), atol=0.01, rtol=0)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert boxes.min() >= 0 and boxes.max() <= 1
    for k in range(3):
        sel = labels == k
        # uncut boxes (centre away from the border) follow N(μ, σ) clipped to μ ± 2σ
        inner = sel & (centres[:, 0] > 0.4) & (centres[:, 0] < 0.6) & (centres[:, 1] > 0.4) & (centres[:, 1] < 0.6)
        assert abs(float(w[inner].mean()) - float(prior.w_mean[k])) < 0.1 * float(prior.w_mean[k])
        assert abs(float(h[inner].std()) - float(prior.h_std[k])) < 0.25 * float(prior.h_std[k])
        assert float(w[inner].max()) <= float(prior.w_mean[k] + 2 * prior.w_std[k]) + 1e-6
        assert float(w[inner].min()) >= float(prior.w_mean[k] - 2 * prior.w_std[k]) - 1e-6
    assert float(centres.min()) >= 0.0 and (w >= 0).all()


def test_build_instances_slots():
    prior = make_prior()
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 32, 64]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    inst = build_instances(targets, [(64, 64), (32, 32)], prior, fake_ratio=5, max_instances=300)
    assert inst.labels.shape == (2, 6)
    assert inst.is_real.tolist() == [[True] + [False] * 5, [False] * 6]
    assert inst.valid.tolist() == [[True] * 6, [True] + [False] * 5]
    torch.testing.assert_close(inst.boxes[0, 0], torch.tensor([0.0, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(inst.size_px[0, 0], torch.tensor([32.0, 64.0]))


def test_position_encoding_is_zero_on_padding():
    icd = make_module()
    teacher, _, _, sizes, strides = make_inputs()
    tokens = icd.teacher_tokens(teacher, strides, sizes)
    pos = tokens.position_encoding()
    assert pos.shape == (2, tokens.tokens.shape[1], 256)
    assert float(pos[~tokens.valid].abs().max()) == 0.0
    # the per-axis codes are the 2-D encoding of §4.2 on every valid token
    masks = valid_token_mask(tokens.level_shapes, strides, sizes, "cpu")
    full = torch.cat([level_position_encoding(m, 128).flatten(1, 2) for m in masks], dim=1)
    torch.testing.assert_close(pos[tokens.valid], full[tokens.valid])


@pytest.mark.parametrize("teacher_channels", [32, 256])
def test_folded_keys_and_values_equal_the_spec_composition(teacher_channels):
    """K = W_K·(input_proj(T) + W_P·PE), V = W_V·input_proj(T) (§4.2), computed the plain way,
    equal the folded computation on valid tokens, and so do the gradients they pass back."""
    icd = make_module(teacher_channels=teacher_channels)
    teacher, _, _, sizes, strides = make_inputs(ct=teacher_channels)
    tokens = icd.teacher_tokens(teacher, strides, sizes)
    layer = icd.layers[0]

    def plain():
        projected = icd.input_proj(tokens.tokens)
        keys = layer.k_proj(projected + icd.pos_proj(tokens.position_encoding()))
        return keys.view(*keys.shape[:2], 8, -1).transpose(1, 2), layer.v_proj(projected)

    grads = []
    for compute in (plain, lambda: icd.keys_and_values(layer, tokens)):
        icd.zero_grad()
        keys, values = compute()
        valid_keys = keys.transpose(1, 2)[tokens.valid]
        (valid_keys.square().sum() + values.sin().sum()).backward()
        grads.append({n: p.grad.clone() for n, p in icd.named_parameters() if p.grad is not None})
        if compute is plain:
            reference = (valid_keys.detach(), values.detach())
    torch.testing.assert_close(valid_keys, reference[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(values, reference[1], rtol=1e-4, atol=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-3, msg=name)


# ---- gradient isolation ----------------------------------------------------------------------------

def test_distill_loss_reaches_only_adapter_and_student():
    icd = make_module()
    teacher, student, targets, sizes, strides = make_inputs()
    teacher = [t.requires_grad_(True) for t in teacher]
    losses = icd.losses(teacher, student, targets, sizes, strides)
    losses["distill/icd/feature"].backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)
    for name, p in icd.named_parameters():
        touched = p.grad is not None and p.grad.abs().sum() > 0
        assert touched == name.startswith("adapters."), name


def test_aux_loss_trains_encoder_decoder_predictor_not_student():
    icd = make_module()
    teacher, student, targets, sizes, strides = make_inputs()
    losses = icd.losses(teacher, student, targets, sizes, strides)
    (losses["distill/icd/idf"] + losses["distill/icd/reg"]).backward()
    assert all(s.grad is None for s in student)
    grads = {n for n, p in icd.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("query_mlp.") for n in grads)
    assert any(n.startswith("layers.0.k_proj") for n in grads)
    assert any(n.startswith("predictor.") for n in grads)
    assert not any(n.startswith("adapters.") for n in grads)


def test_decoder_warmup_stage_has_only_aux_losses():
    icd = make_module()
    teacher, _, targets, sizes, strides = make_inputs()
    losses = icd.losses(teacher, None, targets, sizes, strides)
    assert set(losses) == {"distill/icd/idf", "distill/icd/reg"}


def test_instance_attention_maps_shapes_and_mass():
    icd = make_module()
    teacher, _, targets, sizes, strides = make_inputs()
    maps = icd.instance_attention(teacher, targets, sizes, strides)
    assert [m[0].shape[0] for m in maps] == [1, 3]
    total = sum(level.sum(dim=(1, 2)) for level in maps[1])
    torch.testing.assert_close(total, torch.ones(3))
