"""Mixed precision (``solver.amp``): what must stay float32 under bf16 / fp16 autocast.

Under autocast the detectors' convolutions return bf16 / fp16 maps. Anchors, box coding,
proposals and the distillation methods' losses are kept in float32: bf16 has 8 significant bits
(coordinates beyond 1024 px on an 8 px grid) and fp16 overflows at 65504. bf16 autocast runs on
the CPU, so these are checked here; benchmarks/gpu_check.py runs the same paths on a GPU.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from icdistill.detectors import build_detector
from icdistill.detectors.extras import float32_shapes
from icdistill.distill.methods._gid_select import normalised_distances
from icdistill.distill.core.inputs import STUDENT, TEACHER, DistillInputs
from icdistill.distill.icd.losses import attention_weighted_distill_loss
from icdistill.structures import collate_batch


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def tiny_batch():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0]])
    return collate_batch([(torch.rand(3, 64, 96, generator=g), {"boxes": boxes, "labels": torch.tensor([0, 2]),
                                                                "image_id": 0})])


def test_float32_shapes_are_free_float32_views_with_the_levels_shapes():
    levels = [torch.ones(2, 8, 5, 7, dtype=torch.bfloat16), torch.ones(2, 8, 3, 4, dtype=torch.float16)]
    shapes = float32_shapes(levels)
    assert [s.shape for s in shapes] == [lv.shape for lv in levels]
    assert all(s.dtype == torch.float32 and s.stride() == (0, 0, 0, 0) for s in shapes)


def test_dense_anchors_and_head_outputs_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    detector = build_detector("retinanet", backbone="resnet18", num_classes=3, fpn_channels=32).train()
    batch = tiny_batch()
    with torch.no_grad():
        plain = detector.extras(batch.images, batch.image_sizes, detector.features(batch.images), ["anchors"])
        with bf16():
            features = detector.features(batch.images)
            assert next(iter(features.values())).dtype == torch.bfloat16  # the autocast this guards against
            mixed = detector.extras(batch.images, batch.image_sizes, features, ["anchors", "dense"])
    assert mixed["anchors"][0].dtype == torch.float32
    assert torch.equal(mixed["anchors"][0], plain["anchors"][0])  # not rounded to bf16
    assert mixed["dense"].cls_logits.dtype == torch.float32 and mixed["dense"].bbox_regression.dtype == torch.float32


def test_rpn_anchors_and_proposals_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    detector = build_detector("faster_rcnn", backbone="resnet18", num_classes=3, fpn_channels=32).train()
    batch = tiny_batch()
    with bf16():
        losses, extras = detector.forward_train(batch.images, batch.image_sizes, detector.features(batch.images),
                                                batch.targets, extras=("rpn",))
    rpn = extras["rpn"]
    assert rpn.anchors[0].dtype == torch.float32 and rpn.deltas.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in rpn.proposals)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())


def test_methods_read_float32_features_and_the_student_still_gets_gradients():
    student_map = torch.randn(1, 8, 4, 6, dtype=torch.bfloat16, requires_grad=True)
    teacher_map = torch.randn(1, 8, 4, 6, dtype=torch.bfloat16)
    inputs = DistillInputs(images=torch.zeros(1, 3, 16, 24), image_sizes=[(16, 24)], targets=[], iteration=0,
                           levels=("p2",), strides=(4,), teacher=None, teacher_features=OrderedDict(p2=teacher_map),
                           student=None, student_features=OrderedDict(p2=student_map))
    assert inputs.teacher_levels[0].dtype == torch.float32 and inputs.student_levels[0].dtype == torch.float32
    assert torch.equal(inputs.teacher_levels[0], teacher_map.float())
    inputs.student_levels[0].sum().backward()
    assert student_map.grad is not None and torch.all(student_map.grad == 1)
    pooled = inputs.roi_align(STUDENT, [torch.tensor([[0.0, 0.0, 12.0, 12.0]])], output_size=2)
    assert pooled.dtype == torch.float32 and pooled.shape == (1, 8, 2, 2)
    assert inputs.roi_align(TEACHER, [torch.tensor([[0.0, 0.0, 12.0, 12.0]])], output_size=2).dtype == torch.float32


def test_relation_distances_do_not_cancel_under_autocast():
    # Large, close rows: |xi|² ≈ 2e7 while |xi - xj|² ≈ 1e3; in bf16 the Gram trick returns noise.
    g = torch.Generator().manual_seed(0)
    x = 100 + torch.randn(6, 2048, generator=g)
    exact = normalised_distances(x)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            mixed = normalised_distances(x)
        assert mixed.dtype == torch.float32 and torch.allclose(mixed, exact, atol=1e-4), dtype


def test_icds_distillation_loss_is_float32_from_half_inputs():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 30, 16, generator=g), torch.randn(2, 30, 16, generator=g)
    weights = torch.rand(2, 4, 30, generator=g)
    exact = attention_weighted_distill_loss(student, teacher, weights, num_heads=4)
    with bf16():
        mixed = attention_weighted_distill_loss(student.bfloat16(), teacher.bfloat16(), weights, num_heads=4)
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, exact, rtol=2e-2)
