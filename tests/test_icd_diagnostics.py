"""ICD's diagnostics on constructed cases, and this project's position prior in the decoder."""

import math

import pytest
import torch

from icdistill.distill.icd.module import ICDModule, code_heads
from icdistill.distill.icd.diagnostics import (
    attention_distinctness,
    attention_in_boxes,
    auroc,
    diagnostic_warnings,
    inside_boxes,
    token_centres,
    uniform_in_boxes,
)
from icdistill.distill.icd.losses import point_position_code, split_heads
from icdistill.distill.icd.sampling import PriorTensors, build_instances


def test_auroc_of_a_constant_a_perfect_and_an_inverted_predictor():
    positive = torch.tensor([True, True, False, False, False])
    assert auroc(torch.zeros(5), positive) == 0.5
    assert auroc(torch.tensor([2.0, 3.0, 0.0, 1.0, -1.0]), positive) == 1.0
    assert auroc(torch.tensor([-2.0, -3.0, 0.0, 1.0, -1.0]), positive) == 0.0
    # one tie between a positive and a negative counts half
    assert auroc(torch.tensor([1.0, 3.0, 1.0, 0.0, 0.0]), positive) == pytest.approx(5.5 / 6)
    assert math.isnan(auroc(torch.ones(3), torch.tensor([True, True, True])))


def test_attention_on_the_box_gives_mass_near_one_and_uniform_gives_the_area_share():
    centres = token_centres([(4, 4), (2, 2)], [8, 16])  # a 32x32 image: 16 + 4 tokens
    assert centres.shape == (20, 2) and centres[0].tolist() == [4.0, 4.0] and centres[16].tolist() == [8.0, 8.0]
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 32.0]])
    inside = inside_boxes(centres, boxes)
    on_box = inside.float() / inside.sum(dim=1, keepdim=True)  # a decoder that attends to the box
    assert attention_in_boxes(on_box, inside).tolist() == pytest.approx([1.0, 1.0])
    valid = torch.ones(20, dtype=torch.bool)
    uniform = torch.full((2, 20), 1 / 20)
    assert attention_in_boxes(uniform, inside).tolist() == pytest.approx(uniform_in_boxes(inside, valid).tolist())
    assert uniform_in_boxes(inside, valid).tolist() == pytest.approx([5 / 20, 5 / 20])  # 4 fine + 1 coarse each
    assert attention_distinctness(on_box).tolist() == pytest.approx([1.0])  # disjoint maps
    assert attention_distinctness(uniform).tolist() == pytest.approx([0.0])  # identical maps
    assert attention_distinctness(uniform[:1]).numel() == 0


def test_warnings_name_an_unlearned_decoder_and_stay_quiet_for_a_learned_one():
    assert any("has not learned identification" in n and "position_prior: true" in n
               for n in diagnostic_warnings({"icd/idf_auroc": 0.5}))
    # a run that has the position prior is not told to turn it on
    assert not any("position_prior" in n for n in diagnostic_warnings({"icd/idf_auroc": 0.5}, position_prior=True))
    assert diagnostic_warnings({"icd/idf_auroc": 0.9, "icd/attn_in_box": 0.4, "icd/attn_in_box_uniform": 0.05}) == []
    assert any("hardly on the instances" in n for n in diagnostic_warnings(
        {"icd/idf_auroc": 0.9, "icd/attn_in_box": 0.06, "icd/attn_in_box_uniform": 0.05}))


def prior():
    return PriorTensors(torch.tensor([1.0, 1.0]), *(torch.full((2,), v) for v in (0.2, 0.05, 0.2, 0.05)))


def module(**kw):
    torch.manual_seed(0)
    return ICDModule(num_classes=2, teacher_channels=16, student_channels=8, prior=prior(), hidden_dim=32,
                     num_heads=4, **kw)


def tokens_and_instances(icd):
    torch.manual_seed(1)
    feats = [torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)]
    teacher = icd.teacher_tokens(feats, [8, 16], [(64, 64)])
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0], [40.0, 40.0, 64.0, 64.0]]), "labels": torch.tensor([0, 1])}]
    inst = build_instances(targets, [(64, 64)], icd.prior, fake_ratio=0, max_instances=0, jitter=0.0)
    return feats, teacher, targets, inst


def test_the_position_prior_adds_lambda_times_the_code_product_to_each_head_logit():
    paper, ours = module(), module(position_prior=True)
    ours.load_state_dict(paper.state_dict(), strict=False)  # same weights; ours adds only λ_h
    with torch.no_grad():
        ours.layers[0].position_scale.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    _, teacher, _, inst = tokens_and_instances(paper)
    logp = paper.attention(teacher, inst).log()
    logo = ours.attention(teacher, inst).log()
    code_q = code_heads(point_position_code(inst.centres, 16), 4)  # [B, H, K, d_h]
    code_k = code_heads(teacher.position_encoding(), 4)  # [B, H, S, d_h]
    extra = (code_q @ code_k.transpose(-1, -2)) / math.sqrt(8) * torch.tensor([0.0, 1.0, 2.0, 3.0])[None, :, None, None]
    # log-softmax differences remove the per-row constant
    diff = (logo - logp) - (logo - logp).mean(dim=-1, keepdim=True)
    want = extra - extra.mean(dim=-1, keepdim=True)
    torch.testing.assert_close(diff, want, atol=1e-4, rtol=1e-4)


def test_with_the_position_prior_the_fused_forward_and_the_chunked_weights_agree_with_the_explicit_attention():
    icd = module(position_prior=True)
    with torch.no_grad():
        icd.layers[0].position_scale.fill_(40.0)
    _, teacher, _, inst = tokens_and_instances(icd)
    layer = icd.layers[0]
    query, code = icd.queries(inst), icd.query_codes(inst)
    keys, values = icd.keys_and_values(layer, teacher)
    assert keys.shape[-1] == 2 * layer.head_dim
    probs = layer.attention_probs(query, keys, teacher.valid, code)  # [B, H, K, S]
    attended = (probs @ split_heads(values, 4)).transpose(1, 2).flatten(2)
    u = layer.norm1(query + layer.out_proj(attended))
    torch.testing.assert_close(layer(query, keys, values, teacher.valid, code), layer.norm2(u + layer.ffn(u)),
                               atol=1e-5, rtol=1e-5)
    weights = layer.real_instance_weights(query, keys, teacher.valid, inst.is_real, chunk=1, query_code=code)
    torch.testing.assert_close(weights, probs.sum(dim=2), atol=1e-5, rtol=1e-5)
    # a large λ makes each query look at its own corner of the image
    centres = token_centres(teacher.level_shapes, [8, 16])
    inside = inside_boxes(centres, torch.tensor([[0.0, 0, 24, 24], [32, 32, 64, 64]]))
    mass = attention_in_boxes(probs.mean(dim=1)[0], inside)
    assert (mass > 1.5 * uniform_in_boxes(inside, teacher.valid[0])).all()


def test_every_head_gets_the_same_frequencies_of_both_axes():
    code = torch.arange(16.0).view(1, 1, 16)  # y dims 0..7, x dims 8..15
    heads = code_heads(code, 4)[0, :, 0]
    assert heads.tolist() == [[0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13], [6, 7, 14, 15]]


def test_the_position_kernel_width_is_a_fixed_buffer_no_optimiser_moves():
    """λ_h is fixed and named so: a buffer in the state dict, not a parameter, left out of the
    method's optimiser and unchanged by training; the paper's decoder has none."""
    from icdistill.engine.optim import build_method_optimizer

    assert module().layers[0].position_scale is None
    assert "layers.0.position_scale" not in module().state_dict()
    icd = module(position_prior=True, position_scale=64.0)
    scale = icd.layers[0].position_scale
    assert "layers.0.position_scale" in icd.state_dict() and not scale.requires_grad
    assert all(p is not scale for p in icd.parameters())
    opt = build_method_optimizer(icd, lr=1e-2, weight_decay=1e-4)
    assert all(p is not scale for group in opt.param_groups for p in group["params"])
    feats, _, targets, _ = tokens_and_instances(icd)
    before = [p.detach().clone() for p in icd.parameters()]
    for _ in range(3):
        losses = icd.losses(feats, None, targets, [(64, 64)], [8, 16])
        opt.zero_grad()
        (losses["distill/icd/idf"] + losses["distill/icd/reg"]).backward()
        opt.step()
    assert torch.equal(icd.layers[0].position_scale, torch.full((4,), 64.0))
    assert any(not torch.equal(a, b) for a, b in zip(before, icd.parameters()))  # the rest did train


def box_attention_case(icd):
    """Teacher tokens whose features are a fixed vector v inside box [0, 24)² and 0 elsewhere,
    one real instance on that box; returns (teacher tokens, instances, inside [1, S])."""
    v = torch.zeros(16)
    v[0] = 1.0
    feats = []
    for size, stride in ((8, 8), (4, 16)):
        f = torch.zeros(1, 16, size, size)
        inside_cells = int(24 // stride) + (1 if 24 % stride else 0)
        f[0, :, :inside_cells, :inside_cells] = v[:, None, None]
        feats.append(f)
    teacher = icd.teacher_tokens(feats, [8, 16], [(64, 64)])
    box = torch.tensor([[0.0, 0.0, 24.0, 24.0]])
    inst = build_instances([{"boxes": box, "labels": torch.tensor([0])}], [(64, 64)], icd.prior,
                           fake_ratio=0, max_instances=0, jitter=0.0)
    inside = inside_boxes(token_centres(teacher.level_shapes, [8, 16]), box)
    return teacher, inst, inside


def in_box_mass(icd, teacher, inst, inside, content: bool) -> float:
    return float(attention_in_boxes(icd.attention(teacher, inst, content=content)[0, :, :1].mean(dim=0), inside))


def test_kernel_rows_separate_what_the_decoder_learned_from_the_position_kernel():
    """Constructed cases. (a) The learned content logits match a feature that lies only in the
    box: the decoder's attention in the box far exceeds the kernel's alone, and no kernel warning.
    (b) The learned part is zero (q = 0): attention equals the kernel's, and the warning says so."""
    icd = module(position_prior=True, position_scale=1.0)  # a wide kernel
    with torch.no_grad():
        for p in (icd.pos_proj.weight, icd.pos_proj.bias, icd.layers[0].k_proj.bias, icd.input_proj.weight,
                  icd.input_proj.bias):
            p.zero_()
        icd.input_proj.weight[0, 0] = 1.0  # T'[0] = v[0]
        layer = icd.layers[0]
        layer.k_proj.weight.zero_()
        layer.k_proj.weight[:, 0] = 1.0  # every key dim = v[0]: 1 inside the box, 0 outside
        layer.q_proj.weight.zero_()
        layer.q_proj.bias.fill_(20.0)  # every query dim 20: content logit 20·d_h/√d_h inside the box
    teacher, inst, inside = box_attention_case(icd)
    learned, kernel = in_box_mass(icd, teacher, inst, inside, True), in_box_mass(icd, teacher, inst, inside, False)
    assert learned > 0.95 and kernel < 0.5
    metrics = {"icd/idf_auroc": 0.9, "icd/attn_in_box": learned, "icd/attn_in_box_uniform": 0.1,
               "icd/attn_in_box_kernel": kernel}
    assert not any("position kernel" in n for n in diagnostic_warnings(metrics, position_prior=True))

    with torch.no_grad():
        layer.q_proj.weight.zero_()
        layer.q_proj.bias.zero_()
    learned, kernel = in_box_mass(icd, teacher, inst, inside, True), in_box_mass(icd, teacher, inst, inside, False)
    assert learned == pytest.approx(kernel, abs=1e-6)
    metrics.update({"icd/attn_in_box": learned, "icd/attn_in_box_kernel": kernel})
    assert any("position kernel" in n for n in diagnostic_warnings(metrics, position_prior=True))
    # a paper decoder's metrics have no kernel rows, and its warnings never mention one
    assert not any("position kernel" in n for n in diagnostic_warnings(metrics, position_prior=False))


def test_diagnostics_of_a_run_on_real_images(tmp_path, shapes_root):
    """End to end on the shapes data: all four numbers, in range, from a frozen teacher."""
    from icdistill.config import DataConfig, ShapesConfig
    from icdistill.data import build_datasets, compute_prior
    from icdistill.detectors import build_detector, freeze_as_teacher
    from icdistill.distill.icd.build import prior_tensors
    from icdistill.distill.icd.diagnostics import icd_diagnostics

    data = DataConfig(format="shapes", shapes=ShapesConfig(root=str(shapes_root), num_train=12, num_test=6,
                                                           image_height=64, image_width=96),
                      min_sizes=(64,), max_size=96, test_size=64)
    train, test = build_datasets(data, with_masks=False, progress=False)
    torch.manual_seed(0)
    teacher = freeze_as_teacher(build_detector("retinanet", backbone="resnet18", num_classes=train.num_classes,
                                               fpn_channels=32, anchor_sizes=(16, 32, 64, 128, 256)))
    icd = ICDModule(num_classes=train.num_classes, teacher_channels=32, student_channels=32,
                    prior=prior_tensors(compute_prior(train)), hidden_dim=32, num_heads=4)
    rng = torch.get_rng_state()
    out = icd_diagnostics(icd, teacher, test, teacher.level_names, teacher.strides, torch.device("cpu"), max_images=4)
    assert torch.equal(rng, torch.get_rng_state())  # the training stream is untouched
    assert set(out) == {"icd/idf_auroc", "icd/attn_in_box", "icd/attn_in_box_uniform", "icd/attn_distinct"}
    assert 0.0 <= out["icd/idf_auroc"] <= 1.0 and 0.0 < out["icd/attn_in_box_uniform"] < 1.0
    assert out == icd_diagnostics(icd, teacher, test, teacher.level_names, teacher.strides, torch.device("cpu"),
                                  max_images=4)  # reproducible
    # with the position prior the same numbers come for the kernel alone (no kernel, no rows above)
    torch.manual_seed(0)
    ours = ICDModule(num_classes=train.num_classes, teacher_channels=32, student_channels=32,
                     prior=prior_tensors(compute_prior(train)), hidden_dim=32, num_heads=4, position_prior=True,
                     position_scale=64.0)
    out = icd_diagnostics(ours, teacher, test, teacher.level_names, teacher.strides, torch.device("cpu"), max_images=4)
    kernel_rows = {"icd/idf_auroc_kernel", "icd/attn_in_box_kernel", "icd/attn_distinct_kernel"}
    assert set(out) == {"icd/idf_auroc", "icd/attn_in_box", "icd/attn_in_box_uniform", "icd/attn_distinct",
                        *kernel_rows}
    assert all(0.0 <= out[k] <= 1.0 for k in kernel_rows)
