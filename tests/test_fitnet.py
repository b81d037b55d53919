"""FitNet baseline: full-map imitation through a 1x1 adapter, MSE over valid positions."""

import json

import torch

from icdistill.cli import main
from icdistill.distill.fitnet import FitNetModule


def test_identical_features_through_an_identity_adapter_give_zero():
    fit = FitNetModule(student_channels=8, teacher_channels=8)
    with torch.no_grad():
        fit.adapter.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        fit.adapter.bias.zero_()
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    loss = fit(feats, [f.clone() for f in feats], [], [(64, 64), (40, 30)], [8, 16])["distill/fitnet"]
    assert float(loss) == 0.0


def test_padding_is_not_imitated_and_gradients_reach_student_and_adapter_only():
    fit = FitNetModule(student_channels=4, teacher_channels=6, loss_weight=2.0)
    teacher = [torch.randn(1, 6, 8, 8, requires_grad=True)]
    student = [torch.randn(1, 4, 8, 8, requires_grad=True)]
    loss = fit(teacher, student, [], [(32, 32)], [8])["distill/fitnet"]  # valid: the top-left 4x4
    loss.backward()
    assert teacher[0].grad is None
    assert student[0].grad[..., 4:, :].abs().sum() == 0 and student[0].grad[..., :4, :4].abs().sum() > 0
    assert fit.adapter.weight.grad.abs().sum() > 0
    expected = 2.0 * (fit.adapter(student[0]) - teacher[0]).pow(2).mean(1)[0, :4, :4].mean()
    torch.testing.assert_close(loss, expected)
    assert fit(teacher, None, [], [(32, 32)], [8]) == {}


def test_fitnet_distillation_from_the_cli(tmp_path, tiny_overrides, empty_config):
    sets = [f"--set={s}" for s in tiny_overrides]
    teacher = tmp_path / "teacher"
    assert main(["--no-progress", "train", str(empty_config), "--out", str(teacher), *sets]) == 0
    run = tmp_path / "fitnet"
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(run), *sets,
                 "--set=distill.method=fitnet", "--set=teacher.family=retinanet", "--set=teacher.backbone=resnet18",
                 "--set=teacher.fpn_channels=32", "--set=teacher.anchor_sizes=[16, 32, 64, 128, 256]",
                 f"--set=teacher.weights={teacher / 'student.pt'}"]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "distill/fitnet" in log[-1] and "aux/idf" not in log[-1]
