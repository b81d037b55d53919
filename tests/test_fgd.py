"""FGD (``fgd``, Yang et al. CVPR 2022): the worked numeric cases, each also recomputed here by
an independent loop-by-loop reading of the original's procedure, the masks (box scaling, range,
overlaps, padding), the GcBlock, the gradients (never into the teacher), the builder's defaults
per family and the config checks."""

from __future__ import annotations

import math
import json
from types import SimpleNamespace

import pytest
import torch

from distill_helpers import (
    PRIOR, assert_gradients_reach_only_student_and_method, assert_recipes_follow_the_paper_protocols, cli_distill,
    inputs_for, method_step,
)
from icdistill.cli import main
from icdistill.config import load_config
from icdistill.distill.build import build_method
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.registry import ADAPT, NATIVE, method_names, support_label
from icdistill.distill.methods.fgd import (
    FCOS_ROW, FGD, RETINANET_ROW, SPEC, TWO_STAGE_ROW, FGDConfig, GlobalContextBlock, attention_maps, build_fgd,
    focal_masks,
)
from icdistill.errors import ConfigError

TERMS = ("fg", "bg", "att", "global")


# ---------------------------------------------------------------- an independent reference ---
def reference_terms(t, s, boxes, image_size, temperature):
    """FGD's four unweighted terms for ONE image, computed cell by cell with Python floats, the
    way the original states them: masks by filling the inclusive floor..ceil range of each box
    (mapped by W/img_w, which equals 1/stride when the image fills the map), the teacher's
    attention from explicit exponentials, GcBlocks at init (R(F) = F)."""
    C, H, W = len(t), len(t[0]), len(t[0][0])
    img_h, img_w = image_size

    def attention(f):
        gs = [[sum(abs(f[c][h][w]) for c in range(C)) / C for w in range(W)] for h in range(H)]
        zs = sum(math.exp(gs[h][w] / temperature) for h in range(H) for w in range(W))
        sa = [[H * W * math.exp(gs[h][w] / temperature) / zs for w in range(W)] for h in range(H)]
        gc = [sum(abs(f[c][h][w]) for h in range(H) for w in range(W)) / (H * W) for c in range(C)]
        zc = sum(math.exp(g / temperature) for g in gc)
        return sa, [C * math.exp(g / temperature) / zc for g in gc]

    fg = [[0.0] * W for _ in range(H)]
    for x1, y1, x2, y2 in boxes:
        wmin, wmax = math.floor(x1 / img_w * W), math.ceil(x2 / img_w * W)
        hmin, hmax = math.floor(y1 / img_h * H), math.ceil(y2 / img_h * H)
        area = 1.0 / ((hmax + 1 - hmin) * (wmax + 1 - wmin))
        for h in range(hmin, min(hmax + 1, H)):
            for w in range(wmin, min(wmax + 1, W)):
                fg[h][w] = max(fg[h][w], area)
    n_bg = sum(1 for h in range(H) for w in range(W) if fg[h][w] == 0)
    bg = [[(1.0 / n_bg if fg[h][w] == 0 else 0.0) for w in range(W)] for h in range(H)]
    sa_t, ca_t = attention(t)
    sa_s, ca_s = attention(s)
    cells = [(c, h, w) for c in range(C) for h in range(H) for w in range(W)]
    sq = {k: (s[k[0]][k[1]][k[2]] - t[k[0]][k[1]][k[2]]) ** 2 for k in cells}
    return {
        "fg": sum(fg[h][w] * sa_t[h][w] * ca_t[c] * sq[c, h, w] for c, h, w in cells),
        "bg": sum(bg[h][w] * sa_t[h][w] * ca_t[c] * sq[c, h, w] for c, h, w in cells),
        "att": sum(abs(a - b) for a, b in zip(ca_s, ca_t))
        + sum(abs(sa_s[h][w] - sa_t[h][w]) for h in range(H) for w in range(W)),
        "global": sum(sq.values()),
    }


def one_level_fgd(channels: int, weights=RETINANET_ROW, **options) -> FGD:
    return FGD(levels=["p3"], student_channels=channels, teacher_channels=channels, weights=weights, **options)


def run_one_level(method: FGD, t, s, image_size, stride, boxes):
    """The method's weighted losses on one level of one image: t, s float[1, C, H, W], boxes
    xyxy pixels."""
    targets = [{"boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4), "labels": torch.zeros(len(boxes))}]
    return method(inputs_for([t], [s], [image_size], [stride], targets=targets))


def unweighted(losses, weights=RETINANET_ROW):
    scale = {"fg": weights.fg_weight, "bg": weights.bg_weight, "att": weights.attention_weight,
             "global": weights.global_weight}
    return {k: float(losses[f"distill/fgd/{k}"].detach()) / scale[k] for k in TERMS}


# ------------------------------------------------------------------------- numeric cases ---
def test_uniform_case_gives_the_worked_values():
    """C = 1, 3x3, teacher 2, student 1, image 48 (stride 16), box [0, 0, 16, 16]."""
    t, s = torch.full((1, 1, 3, 3), 2.0), torch.ones(1, 1, 3, 3)
    fg, bg = focal_masks([torch.tensor([[0.0, 0, 16, 16]])], [(48, 48)], 16, torch.ones(1, 3, 3, dtype=torch.bool))
    expected_fg = torch.zeros(3, 3)
    expected_fg[:2, :2] = 0.25  # inclusive ceil: x2' = 1 -> columns 0..1
    torch.testing.assert_close(fg[0], expected_fg)
    torch.testing.assert_close(bg[0], (expected_fg == 0).float() / 5)
    losses = run_one_level(one_level_fgd(1), t, s, (48, 48), 16, [[0, 0, 16, 16]])
    for term, value in {"fg": 1.0, "bg": 1.0, "att": 0.0, "global": 9.0}.items():
        assert math.isclose(unweighted(losses)[term], value, rel_tol=1e-5, abs_tol=1e-7), term
    assert math.isclose(float(sum(losses.values()).detach()), 1.545e-3, rel_tol=1e-5)


def ramp_teacher() -> torch.Tensor:
    """T[c, h, w] = (c + 1)(4h + w)/10 on a 2x4x4 map."""
    c, h, w = torch.meshgrid(torch.arange(2.0), torch.arange(4.0), torch.arange(4.0), indexing="ij")
    return ((c + 1) * (4 * h + w) / 10).unsqueeze(0)


def test_ramp_case_gives_the_worked_values():
    """C = 2, 4x4 ramp teacher, student 0, image 32 (stride 8), box [0, 0, 8, 8]."""
    t, s = ramp_teacher(), torch.zeros(1, 2, 4, 4)
    spatial, channel = attention_maps(t, 0.5)
    torch.testing.assert_close(channel[0], torch.tensor([0.364851, 1.635149]), atol=1e-6, rtol=0)
    assert math.isclose(float(spatial[0, 0, 0]), 0.046450, abs_tol=1e-6)
    assert math.isclose(float(spatial[0, 3, 3]), 4.181320, abs_tol=1e-6)
    losses = run_one_level(one_level_fgd(2), t, s, (32, 32), 8, [[0, 0, 8, 8]])
    got = unweighted(losses)
    reference = reference_terms(t[0].tolist(), s[0].tolist(), [[0, 0, 8, 8]], (32, 32), 0.5)
    for term, value in {"fg": 0.1335275, "bg": 14.645578, "att": 16.336421, "global": 62.0}.items():
        assert math.isclose(got[term], value, rel_tol=1e-5), term
        assert math.isclose(reference[term], value, rel_tol=1e-6), term  # the worked values, recomputed
    assert math.isclose(float(sum(losses.values()).detach()), 0.01593453, rel_tol=1e-5)


def test_attention_of_a_two_level_map():
    f = torch.tensor([[0.0, 0.0], [0.0, math.log(2) / 2]]).view(1, 1, 2, 2)
    spatial, channel = attention_maps(f, 0.5)
    torch.testing.assert_close(spatial[0], torch.tensor([[0.8, 0.8], [0.8, 1.6]]))
    torch.testing.assert_close(channel[0], torch.tensor([1.0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_maps_and_boxes_agree_with_the_loop_reference(seed):
    """Random teacher and student maps, overlapping boxes of random sizes, temperature 0.8:
    the method's four terms equal the cell-by-cell reference."""
    g = torch.Generator().manual_seed(seed)
    t, s = torch.randn(1, 3, 5, 6, generator=g), torch.randn(1, 3, 5, 6, generator=g)
    xy = torch.rand(3, 2, generator=g) * torch.tensor([30.0, 24.0])
    wh = 2 + torch.rand(3, 2, generator=g) * 14
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([48.0, 40.0]))], dim=1).tolist()
    losses = run_one_level(one_level_fgd(3, weights=FCOS_ROW), t, s, (40, 48), 8, boxes)
    want = reference_terms(t[0].tolist(), s[0].tolist(), boxes, (40, 48), FCOS_ROW.temperature)
    got = unweighted(losses, FCOS_ROW)
    for term in TERMS:
        assert math.isclose(got[term], want[term], rel_tol=1e-4), (term, got[term], want[term])


# ------------------------------------------------------------------------------- masks ---
def test_box_scaling_by_stride_or_by_the_padded_map():
    """A 16x16 image in a batch padded to 32x32, stride 8 (4x4 map), box [0, 0, 8, 8]."""
    boxes, all_valid = [torch.tensor([[0.0, 0, 8, 8]])], torch.ones(1, 4, 4, dtype=torch.bool)
    fg, _ = focal_masks(boxes, [(16, 16)], 8, all_valid)
    assert int((fg > 0).sum()) == 4 and torch.all(fg[0, :2, :2] == 0.25)
    fg, _ = focal_masks(boxes, [(16, 16)], 8, all_valid, faithful_box_scaling=True)
    assert int((fg > 0).sum()) == 9 and torch.allclose(fg[0, :3, :3], torch.full((3, 3), 1 / 9))


def test_exact_box_range_stops_at_the_box_edge():
    fg, bg = focal_masks([torch.tensor([[0.0, 0, 16, 16]])], [(48, 48)], 16, torch.ones(1, 3, 3, dtype=torch.bool),
                         box_range="exact")
    assert float(fg[0, 0, 0]) == 1.0 and int((fg > 0).sum()) == 1
    assert math.isclose(float(bg.sum()), 1.0, rel_tol=1e-6) and float(bg[0, 2, 2]) == pytest.approx(1 / 8)


def test_overlapping_boxes_keep_the_smallest_box_value_and_empty_images_are_all_background():
    boxes = [torch.tensor([[0.0, 0, 24, 24], [8, 8, 16, 16]]), torch.zeros(0, 4)]
    valid = torch.ones(2, 6, 6, dtype=torch.bool)
    fg, bg = focal_masks(boxes, [(48, 48), (48, 48)], 8, valid)
    assert float(fg[0, 0, 0]) == pytest.approx(1 / 16)  # big box: cells 0..3 -> 4x4
    assert float(fg[0, 1, 1]) == pytest.approx(1 / 4)  # small box: cells 1..2 -> 2x2, and it wins
    assert float(fg[0, 2, 2]) == pytest.approx(1 / 4)
    assert float(fg[0, 3, 3]) == pytest.approx(1 / 16) and float(fg[0, 4, 4]) == 0.0
    assert float(fg[1].sum()) == 0.0
    torch.testing.assert_close(bg[1], torch.full((6, 6), 1 / 36))


def test_padding_neither_counts_nor_weighs_by_default():
    """Image 32 x 24 in a 32 x 40 batch at stride 8: columns 3 and 4 are padding."""
    t, s = torch.randn(1, 2, 4, 5), torch.randn(1, 2, 4, 5)
    s_other = s.clone()
    s_other[..., 3:] += 5.0
    method = one_level_fgd(2)
    box = [[0, 0, 8, 8]]

    def terms(student, m=method):
        return unweighted(m(inputs_for([t], [student], [(32, 24)], [8],
                                       targets=[{"boxes": torch.tensor(box, dtype=torch.float32)}])))

    before, after = terms(s), terms(s_other)
    assert before["fg"] == after["fg"] and before["bg"] == after["bg"]
    _, bg = focal_masks([torch.tensor(box, dtype=torch.float32)], [(32, 24)], 8,
                        torch.tensor([[[True] * 3 + [False] * 2] * 4]))
    assert float(bg[0, :, 3:].abs().sum()) == 0.0 and float(bg[0, 0, 2]) == pytest.approx(1 / 8)
    faithful = one_level_fgd(2, faithful_padding=True)
    assert terms(s, faithful)["bg"] != terms(s_other, faithful)["bg"]


# ---------------------------------------------------------------------------- GcBlock ---
def test_gc_block_is_the_identity_at_init_so_global_is_the_plain_squared_error():
    t, s = torch.randn(2, 4, 3, 5), torch.randn(2, 6, 3, 5)
    method = FGD(levels=["p3"], student_channels=6, teacher_channels=4, weights=RETINANET_ROW)
    block = method.parts[0].teacher_global
    torch.testing.assert_close(block(t), t)
    losses = method(inputs_for([t], [s], [(24, 40), (24, 40)], [8], targets=[{"boxes": torch.zeros(0, 4)}] * 2))
    aligned = method.parts[0].align(s)
    want = (aligned - t).pow(2).sum() / 2 * RETINANET_ROW.global_weight
    torch.testing.assert_close(losses["distill/fgd/global"], want)


def test_gc_block_with_trained_weights_matches_a_loop_reference():
    torch.manual_seed(3)
    block = GlobalContextBlock(4).requires_grad_(False)
    for p in block.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64)
    block = block.double()
    wk, bk = block.context_logits.weight.view(4).tolist(), block.context_logits.bias.item()
    w1, b1 = block.transform[0].weight.view(2, 4).tolist(), block.transform[0].bias.tolist()
    ln_w, ln_b = block.transform[1].weight.view(2).tolist(), block.transform[1].bias.view(2).tolist()
    w2, b2 = block.transform[3].weight.view(4, 2).tolist(), block.transform[3].bias.tolist()
    f = x[0].view(4, 6).T.tolist()  # 6 positions x 4 channels
    logits = [sum(wk[c] * f[j][c] for c in range(4)) + bk for j in range(6)]
    z = sum(math.exp(v) for v in logits)
    context = [sum(math.exp(logits[j]) / z * f[j][c] for j in range(6)) for c in range(4)]
    hidden = [sum(w1[k][c] * context[c] for c in range(4)) + b1[k] for k in range(2)]
    mean = sum(hidden) / 2
    var = sum((h - mean) ** 2 for h in hidden) / 2
    normed = [max(0.0, (h - mean) / math.sqrt(var + 1e-5) * ln_w[k] + ln_b[k]) for k, h in enumerate(hidden)]
    add = [sum(w2[c][k] * normed[k] for k in range(2)) + b2[c] for c in range(4)]
    want = x + torch.tensor(add, dtype=torch.float64).view(1, 4, 1, 1)
    torch.testing.assert_close(block(x), want)


def test_terms_stay_float32_under_bf16_autocast():
    """solver.amp: bf16 features still give float32 sums close to the fp32 ones."""
    torch.manual_seed(0)
    method = FGD(levels=["p3"], student_channels=8, teacher_channels=16, weights=TWO_STAGE_ROW)
    t, s = torch.randn(2, 16, 12, 20) * 3, torch.randn(2, 8, 12, 20) * 3
    targets = [{"boxes": torch.tensor([[4.0, 8, 60, 90]])}, {"boxes": torch.tensor([[0.0, 0, 150, 90]])}]

    def losses():
        return method(inputs_for([t], [s], [(96, 160), (90, 150)], [8], targets=targets))

    full = losses()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = losses()
    for key, value in full.items():
        assert low[key].dtype == torch.float32
        torch.testing.assert_close(low[key], value, rtol=2e-2, atol=0)


# -------------------------------------------------------------------------- gradients ---
def test_the_teacher_map_receives_no_gradient_and_the_parts_do():
    method = FGD(levels=["p3"], student_channels=3, teacher_channels=5, weights=RETINANET_ROW)
    t = torch.randn(2, 5, 4, 6, requires_grad=True)
    s = torch.randn(2, 3, 4, 6, requires_grad=True)
    boxes = [torch.tensor([[4.0, 4, 20, 30]]), torch.tensor([[0.0, 0, 40, 10]])]
    terms = method.level_terms(method.parts[0], t, s, torch.ones(2, 4, 6, dtype=torch.bool), 8, boxes,
                               [(32, 48), (32, 48)])
    sum(terms.values()).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    parts = method.parts[0]
    for module in (parts.align, parts.student_global, parts.teacher_global):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("family", ["retinanet", "fcos", "faster_rcnn", "mask_rcnn"])
def test_one_distiller_step_on_tiny_detectors_of_different_widths(family):
    """A real step through the registry: the teacher's 64-wide FPN, the student's 32-wide;
    gradients reach the student's FPN and FGD's parts (the teacher-side GcBlock included),
    never the frozen teacher."""
    losses, distiller, teacher = method_step("fgd", family)
    fgd = {k: v for k, v in losses.items() if k.startswith("distill/fgd/")}
    assert set(fgd) == {f"distill/fgd/{t}" for t in TERMS}
    assert_gradients_reach_only_student_and_method(distiller, teacher, fgd)
    method = distiller.method
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parts[0].teacher_global.parameters())
    assert method.optim.kind == "student"
    two_stage = family in ("faster_rcnn", "mask_rcnn")
    assert method.levels == (P2_P6[:4] if two_stage else P3_P7)
    assert method.weights == (TWO_STAGE_ROW if two_stage else RETINANET_ROW if family == "retinanet" else FCOS_ROW)


# --------------------------------------------------------------- builder and config ---
def context(family: str, levels, *, weight_scale=1.0, levels_configured=False):
    detector = SimpleNamespace(family=family, out_channels=256, supported_extras=frozenset())
    return MethodContext(detector, detector, PRIOR, tuple(levels), tuple(range(len(levels))),
                         weight_scale=weight_scale, levels_configured=levels_configured)


P3_P7, P2_P6 = ("p3", "p4", "p5", "p6", "p7"), ("p2", "p3", "p4", "p5", "p6")


@pytest.mark.parametrize("family, levels, row, want_levels, label", [
    ("retinanet", P3_P7, RETINANET_ROW, P3_P7, NATIVE),
    ("fcos", P3_P7, FCOS_ROW, P3_P7, NATIVE),
    ("condinst", P3_P7, FCOS_ROW, P3_P7, ADAPT),
    ("faster_rcnn", P2_P6, TWO_STAGE_ROW, P2_P6[:4], NATIVE),
    ("mask_rcnn", P2_P6, TWO_STAGE_ROW, P2_P6[:4], NATIVE),
    ("cascade_mask_rcnn", P2_P6, TWO_STAGE_ROW, P2_P6[:4], NATIVE),
    ("faster_rcnn_c4", ("c4",), TWO_STAGE_ROW, ("c4",), ADAPT),
    ("faster_rcnn_dc5", ("c5",), TWO_STAGE_ROW, ("c5",), ADAPT),
])
def test_builder_takes_the_official_row_and_levels_of_each_family(family, levels, row, want_levels, label):
    method = build_fgd(FGDConfig(), context(family, levels))
    assert method.weights == row and method.levels == want_levels
    assert support_label(SPEC, family) == label
    assert FCOS_ROW.temperature == 0.8 and RETINANET_ROW.temperature == 0.5


def test_registered_and_selectable_as_distill_method():
    assert "fgd" in method_names() and SPEC.section is FGDConfig and SPEC.warmup_iters == 0
    cfg = load_config(None, ["distill.method=fgd", "distill.fgd.temperature=0.7", "distill.fgd.box_range=exact"])
    assert cfg.distill.fgd == FGDConfig(temperature=0.7, box_range="exact")
    method = build_method(cfg.distill, context("retinanet", P3_P7))
    assert isinstance(method, FGD) and method.weights.temperature == 0.7 and method.box_range == "exact"


def test_section_values_weight_scale_and_configured_levels_override_the_defaults():
    section = FGDConfig(fg_weight=2e-3, temperature=1.5)
    method = build_fgd(section, context("faster_rcnn", P2_P6, weight_scale=4.0, levels_configured=True))
    assert method.weights.fg_weight == 2e-3 and method.weights.temperature == 1.5
    assert method.weights.bg_weight == TWO_STAGE_ROW.bg_weight
    assert method.levels == P2_P6 and method.weight_scale == 4.0  # the user's distill.levels, p6 included
    t, s = torch.full((1, 1, 3, 3), 2.0), torch.ones(1, 1, 3, 3)
    plain = run_one_level(one_level_fgd(1), t, s, (48, 48), 16, [[0, 0, 16, 16]])
    scaled = run_one_level(one_level_fgd(1, weight_scale=4.0), t, s, (48, 48), 16, [[0, 0, 16, 16]])
    for key in plain:
        torch.testing.assert_close(scaled[key], 4.0 * plain[key])


@pytest.mark.parametrize("key, value, message", [
    ("temperature", 0, "'distill.fgd.temperature' must be a positive number"),
    ("fg_weight", -1, "'distill.fgd.fg_weight' must be a number >= 0"),
    ("global_weight", ".nan", "'distill.fgd.global_weight'"),
    ("box_range", "loose", "'distill.fgd.box_range' is 'loose'; valid choices: inclusive, exact"),
    ("alpha", 1, "distill.fgd.alpha"),
])
def test_bad_section_values_are_config_errors_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["distill.method=fgd", f"distill.fgd.{key}={value}"])


def test_method_without_student_features_returns_nothing():
    method = one_level_fgd(2)
    assert method(inputs_for([torch.randn(1, 2, 3, 3)], None, [(24, 24)], [8])) == {}


# ----------------------------------------------------------------------------- the CLI ---
def fgd_logged(run) -> dict:
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {k: v for row in log for k, v in row.items() if k.startswith("distill/fgd/")}


@pytest.mark.parametrize("student", ["retinanet", "fcos"])
def test_fgd_from_the_cli_on_one_stage_students(student, tmp_path, tiny_teacher, tiny_overrides, empty_config):
    """2 iterations from the tiny RetinaNet teacher (FGD reads only features and boxes, so an
    FCOS student takes it too) with the student family's defaults."""
    metrics, log = cli_distill(tmp_path, tiny_teacher, tiny_overrides, empty_config, "fgd", f"model.family={student}")
    assert "bbox/AP" in metrics
    assert {f"distill/fgd/{t}" for t in TERMS} <= set(log[-1])
    assert all(math.isfinite(v) for v in fgd_logged(tmp_path / "fgd").values())


def test_fgd_from_the_cli_on_faster_rcnn(tmp_path, tiny_overrides, empty_config):
    """A 1-iteration Faster R-CNN teacher run, then 2 iterations of FGD on p2-p5 from it."""
    cheap = [*tiny_overrides, "model.family=faster_rcnn", "model.box_batch_size_per_image=32",
             "model.rpn_post_nms_top_n_test=20", "model.detections_per_image=20", "eval.viz_images=0"]
    teacher = tmp_path / "teacher"
    assert main(["--no-progress", "train", str(empty_config), "--out", str(teacher),
                 *[f"--set={s}" for s in [*cheap, "solver.max_iter=1"]]]) == 0
    student = tmp_path / "fgd"
    sets = [*cheap, "solver.max_iter=2", "distill.method=fgd", "distill.warmup_iters=0", "teacher.family=faster_rcnn",
            "teacher.backbone=resnet18", "teacher.fpn_channels=32", "teacher.anchor_sizes=[16, 32, 64, 128, 256]",
            f"teacher.weights={teacher / 'detector.pt'}"]
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(student), *[f"--set={s}" for s in sets]]) == 0
    assert "bbox/AP" in json.loads((student / "metrics.json").read_text())
    logged = fgd_logged(student)
    assert {f"distill/fgd/{t}" for t in TERMS} <= set(logged) and all(math.isfinite(v) for v in logged.values())


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet"])
def test_fgd_recipes_follow_the_paper_protocols(family):
    assert_recipes_follow_the_paper_protocols("fgd", family)


def test_fgd_coco_recipes_for_every_official_family():
    from icdistill.demo import demo_config_path

    root = demo_config_path("student").parents[1] / "coco"
    for family in ("retinanet", "fcos", "faster_rcnn"):
        plain = load_config(root / f"{family}_R50_1x_fgd.yaml")
        inherit = load_config(root / f"{family}_R50_1x_fgd_inherit.yaml")
        assert (plain.model.family, plain.teacher.family, plain.distill.method) == (family, family, "fgd")
        assert not plain.distill.inherit and inherit.distill.inherit
        assert inherit.replace(distill=plain.distill) == plain
    cascade = load_config(root / "faster_rcnn_R50_1x_fgd_from_cascade_mask_rcnn.yaml")
    assert (cascade.teacher.family, cascade.model.family, cascade.distill.inherit) == ("cascade_mask_rcnn", "faster_rcnn", False)
