"""FitNet baseline: full-map imitation through a 1x1 adapter, MSE over valid positions."""

import json
from collections import OrderedDict

import torch

from icdistill.cli import main
from icdistill.distill.methods.fitnet import FitNet
from icdistill.distill.core.inputs import DistillInputs


def inputs_for(teacher, student, sizes, strides):
    """DistillInputs holding only what FitNet reads: features, sizes, strides."""
    names = [f"p{i}" for i in range(len(teacher))]
    return DistillInputs(
        images=torch.zeros(teacher[0].shape[0], 3, 1, 1), image_sizes=sizes, targets=[], iteration=10,
        levels=names, strides=strides, teacher=None, teacher_features=OrderedDict(zip(names, teacher)),
        student=None, student_features=None if student is None else OrderedDict(zip(names, student)),
    )


def test_identical_features_through_an_identity_adapter_give_zero():
    fit = FitNet(student_channels=8, teacher_channels=8)
    with torch.no_grad():
        fit.adapter.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        fit.adapter.bias.zero_()
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    loss = fit(inputs_for(feats, [f.clone() for f in feats], [(64, 64), (40, 30)], [8, 16]))["distill/fitnet/feature"]
    assert float(loss) == 0.0


def test_padding_is_not_imitated_and_gradients_reach_student_and_adapter_only():
    fit = FitNet(student_channels=4, teacher_channels=6, loss_weight=2.0)
    teacher = [torch.randn(1, 6, 8, 8, requires_grad=True)]
    student = [torch.randn(1, 4, 8, 8, requires_grad=True)]
    loss = fit(inputs_for(teacher, student, [(32, 32)], [8]))["distill/fitnet/feature"]  # valid: the top-left 4x4
    loss.backward()
    assert teacher[0].grad is None
    assert student[0].grad[..., 4:, :].abs().sum() == 0 and student[0].grad[..., :4, :4].abs().sum() > 0
    assert fit.adapter.weight.grad.abs().sum() > 0
    expected = 2.0 * (fit.adapter(student[0]) - teacher[0]).pow(2).mean(1)[0, :4, :4].mean()
    torch.testing.assert_close(loss, expected)
    assert fit(inputs_for(teacher, None, [(32, 32)], [8])) == {}


def test_fitnet_distillation_from_the_cli(tmp_path, tiny_overrides, empty_config, tiny_teacher):
    sets = [f"--set={s}" for s in tiny_overrides]
    run = tmp_path / "fitnet"
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(run), *sets,
                 "--set=distill.method=fitnet", "--set=teacher.family=retinanet", "--set=teacher.backbone=resnet18",
                 "--set=teacher.fpn_channels=32", "--set=teacher.anchor_sizes=[16, 32, 64, 128, 256]",
                 "--set=distill.fitnet.adapter=3x3", "--set=distill.fitnet.normalize=defeat",
                 f"--set=teacher.weights={tiny_teacher}"]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "distill/fitnet/feature" in log[-1] and "distill/icd/idf" not in log[-1]
    assert "bbox/AP" in json.loads((run / "metrics.json").read_text())
