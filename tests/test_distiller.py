"""The distiller with real detectors: gradient isolation and the two warm-ups (ICD_SPEC §6, §7)."""

import pytest
import torch

from icdistill.detectors import build_detector, freeze_as_teacher
from icdistill.distill.core.distiller import Distiller, check_alignment
from icdistill.distill.icd.module import ICDModule
from icdistill.distill.icd.sampling import PriorTensors
from icdistill.errors import ModelMismatchError


def tiny(family="retinanet", width=32, **kw):
    return build_detector(family, backbone="resnet18", num_classes=3, fpn_channels=width,
                          anchor_sizes=(16, 32, 64, 128, 256), **kw)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    teacher = freeze_as_teacher(tiny(width=48))
    student = tiny(width=32)
    prior = PriorTensors(*(torch.tensor(v) for v in ([2.0, 1.0, 1.0], [0.2] * 3, [0.05] * 3, [0.2] * 3, [0.05] * 3)))
    icd = ICDModule(num_classes=3, teacher_channels=48, student_channels=32, prior=prior, loss_weight=6.0)
    strides = check_alignment(teacher, student, student.level_names)
    distiller = Distiller(student, icd, levels=student.level_names, strides=strides, warmup_iters=5).train()
    images = torch.randn(2, 3, 64, 96)
    sizes = [(64, 96), (60, 70)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[10.0, 10, 30, 50], [40, 5, 60, 25]]), "labels": torch.tensor([1, 2])},
    ]
    return teacher, distiller, images, sizes, targets


def student_grad_norm(distiller):
    return sum(float(p.grad.abs().sum()) for p in distiller.student.parameters() if p.grad is not None)


def test_no_gradient_reaches_the_teacher(setup):
    teacher, distiller, images, sizes, targets = setup
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller.zero_grad(set_to_none=True)
    losses = distiller(images, sizes, targets, teacher, iteration=10)
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    teacher.train()  # a frozen teacher ignores train()
    assert not teacher.training
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_distillation_warmup_detaches_the_student(setup):
    teacher, distiller, images, sizes, targets = setup
    distiller.zero_grad(set_to_none=True)
    distiller(images, sizes, targets, teacher, iteration=0)["distill/icd/feature"].backward()
    assert student_grad_norm(distiller) == 0.0
    assert distiller.method.adapters[0].weight.grad.abs().sum() > 0

    distiller.zero_grad(set_to_none=True)
    distiller(images, sizes, targets, teacher, iteration=5)["distill/icd/feature"].backward()
    assert student_grad_norm(distiller) > 0.0
    # the distillation loss never reaches the decoder or the query encoder
    for name, p in distiller.method.named_parameters():
        if name.startswith(("layers.", "query_mlp.", "pos_proj.", "predictor.")):
            assert p.grad is None or float(p.grad.abs().sum()) == 0.0, name


def test_decoder_warmup_stage_runs_no_student(setup):
    teacher, distiller, images, sizes, targets = setup
    distiller.zero_grad(set_to_none=True)
    losses = distiller(images, sizes, targets, teacher, method_only=True)
    assert set(losses) == {"distill/icd/idf", "distill/icd/reg"}
    sum(losses.values()).backward()
    assert student_grad_norm(distiller) == 0.0


def test_plain_training_has_only_detection_losses():
    student = tiny()
    losses = Distiller(student).train()(torch.randn(1, 3, 64, 64), [(64, 64)],
                                         [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])}])
    assert losses and all(k.startswith("det/") for k in losses)


def test_misaligned_levels_and_classes_are_reported():
    with pytest.raises(ModelMismatchError, match="p2"):
        check_alignment(tiny("faster_rcnn"), tiny(), ("p2", "p3"))
    other = build_detector("retinanet", backbone="resnet18", num_classes=5, fpn_channels=32)
    with pytest.raises(ModelMismatchError, match="classes"):
        check_alignment(other, tiny(), ("p3",))


def test_group_norm_head_gives_input_dependent_scores():
    torch.manual_seed(0)
    model = tiny(width=64, head_norm="gn").eval()
    images = torch.randn(1, 3, 64, 64)
    head = model.model.head(list(model.features(images).values()))
    assert float(head["cls_logits"].std()) > 1e-3
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.model.head.modules())


def test_group_norm_head_needs_two_channels_per_group():
    from icdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="fpn_channels"):
        tiny(width=32, head_norm="gn")
