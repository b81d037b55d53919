"""The teacher check before distilling (engine/teacher_check.py): an untrained teacher or one of
other classes stops a distillation run before its first step; its numbers land in metrics.json."""

import json
import random

import pytest
import torch

from icdistill.cli import main
from icdistill.config import DistillConfig, EvalConfig
from icdistill.data import build_datasets
from icdistill.demo import demo_configs
from icdistill.detectors import build_model
from icdistill.engine import teacher_check
from icdistill.errors import ConfigError, TeacherCheckError
from icdistill.files import detector_file, load_checkpoint, save_checkpoint

TEACHER = ["teacher.family=retinanet", "teacher.backbone=resnet18", "teacher.fpn_channels=32",
           "teacher.anchor_sizes=[16, 32, 64, 128, 256]"]
# FitNet is the cheapest method to distil with; the check does not depend on the method.
DISTILL = ["distill.method=fitnet", "distill.warmup_iters=1", "eval.viz_images=0", "distill.check_teacher=true",
           "solver.max_iter=2"]


@pytest.fixture(scope="module")
def data(tiny_config):
    cfg = tiny_config()
    return cfg, build_datasets(cfg.data, with_masks=False, progress=False)


def untrained_teacher_file(path, cfg, class_names):
    """A detector file as `icdistill train` writes it, of a detector that was never trained."""
    torch.manual_seed(0)
    adapter = build_model(cfg.teacher, len(class_names), "teacher")
    save_checkpoint(path, detector_file(adapter.model.state_dict(), cfg.to_dict()["teacher"], class_names))
    return path


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, tiny_config, data):
    _, (train_set, _) = data
    cfg = tiny_config(*TEACHER)
    return untrained_teacher_file(tmp_path_factory.mktemp("teacher") / "detector.pt", cfg, train_set.class_names)


def distill_args(out, tiny_overrides, teacher_file, *extra):
    sets = [*tiny_overrides, *TEACHER, *DISTILL, f"teacher.weights={teacher_file}", *extra]
    return ["--no-progress", "distill", "{}", "--out", str(out), *[f"--set={s}" for s in sets]]


def run_cli(empty_config, args):
    args[2] = str(empty_config)
    return main(args)


def test_an_untrained_teacher_stops_the_run_before_its_first_step(tmp_path, tiny_overrides, empty_config,
                                                                  untrained, capsys):
    out = tmp_path / "run"
    assert run_cli(empty_config, distill_args(out, tiny_overrides, untrained)) == 2
    err = capsys.readouterr().err
    assert err.startswith("icdistill: error: teacher check:") and err.count("\n") == 1  # one line, no traceback
    assert "box AP 0.00" in err and "on 6 test images" in err and "distill.check_teacher_min_ap=1" in err
    assert "--set distill.check_teacher=false" in err and "--set distill.check_teacher_min_ap=" in err
    assert not (out / "checkpoints" / "last.pt").exists() and not (out / "metrics.jsonl").exists()


def test_the_override_lets_it_distil_and_the_numbers_land_in_metrics_json(tmp_path, tiny_overrides, empty_config,
                                                                          untrained, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_cli(empty_config, distill_args(out, tiny_overrides, untrained, "distill.check_teacher_min_ap=0")) == 0
    printed = capsys.readouterr().out
    assert "teacher check: box AP 0.00" in printed and "teacher on 6 test images: AP 0.00" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    teacher = {k: v for k, v in metrics.items() if k.startswith("teacher/")}
    assert {"teacher/bbox/AP", "teacher/bbox/AP50", "teacher/bbox/AP75", "teacher/images"} <= set(teacher)
    assert teacher["teacher/bbox/AP"] < 1.0 and teacher["teacher/images"] == 6
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["iter"] == 0 and first["teacher/bbox/AP"] == teacher["teacher/bbox/AP"]
    # the checkpoint holds the check's numbers (the final evaluation's comparison comes after it)
    checked = {k: v for k, v in teacher.items() if k != "teacher/weaker_than_student"}
    assert load_checkpoint(out / "checkpoints" / "last.pt")["teacher_check"] == checked

    # A resumed run reuses the checkpoint's numbers: the teacher is not evaluated again.
    def fail(*args, **kwargs):
        raise AssertionError("the teacher was evaluated again on resume")

    monkeypatch.setattr(teacher_check, "evaluate_teacher", fail)
    args = distill_args(out, tiny_overrides, untrained, "distill.check_teacher_min_ap=0", "solver.max_iter=3")
    assert run_cli(empty_config, [*args, "--resume"]) == 0
    assert "(from the checkpoint)" in capsys.readouterr().out
    resumed = json.loads((out / "metrics.json").read_text())
    assert {k: v for k, v in resumed.items() if k.startswith("teacher/")} == teacher
    assert sum("teacher/bbox/AP" in line for line in (out / "metrics.jsonl").read_text().splitlines()) == 1


def test_the_check_can_be_turned_off(tmp_path, tiny_overrides, empty_config, untrained):
    out = tmp_path / "run"
    args = distill_args(out, tiny_overrides, untrained, "distill.check_teacher=false", "solver.max_iter=1")
    assert run_cli(empty_config, args) == 0
    assert not any(k.startswith("teacher/") for k in json.loads((out / "metrics.json").read_text()))


def test_a_teacher_of_other_classes_is_caught(tmp_path, tiny_overrides, tiny_config, empty_config, data, capsys):
    _, (train_set, _) = data
    names = list(train_set.class_names)
    reordered = untrained_teacher_file(tmp_path / "reordered.pt", tiny_config(*TEACHER), names[::-1])
    assert run_cli(empty_config, distill_args(tmp_path / "run", tiny_overrides, reordered)) == 2
    err = capsys.readouterr().err
    assert "the same names in another order" in err and "first difference at class 0" in err
    assert "--set distill.check_teacher=false" in err and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()

    other = ["cat", *names[1:]]
    with pytest.raises(TeacherCheckError, match=r"only the teacher's: \['cat'\]; only the data's: \['" + names[0]):
        teacher_check.check_class_names(other, names, "teacher.pt")
    teacher_check.check_class_names(None, names, None)  # a torchvision weights name: nothing to compare
    teacher_check.check_class_names(names, names, "teacher.pt")


def test_evaluating_the_teacher_leaves_the_random_streams_alone(tiny_config, data, untrained):
    cfg, (_, test_set) = data
    teacher_cfg = tiny_config(*TEACHER, f"teacher.weights={untrained}").teacher
    teacher = build_model(teacher_cfg, test_set.num_classes, "teacher")
    before = (torch.get_rng_state(), random.getstate())
    metrics = teacher_check.evaluate_teacher(teacher, test_set, cfg.eval, torch.device("cpu"), max_images=4)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert metrics["teacher/images"] == 4 and "teacher/bbox/AP" in metrics
    assert not any(k.startswith("teacher/segm/") for k in metrics)


def test_bad_check_settings_are_config_errors():
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="distill.check_teacher_images"):
        teacher_check.check_teacher(DistillConfig(check_teacher_images=0), EvalConfig(), None, None, None, cpu)
    with pytest.raises(ConfigError, match="distill.check_teacher_min_ap"):
        teacher_check.check_teacher(DistillConfig(check_teacher_min_ap=150.0), EvalConfig(), None, None, None, cpu)
    known = {"teacher/bbox/AP": 20.0}
    assert teacher_check.check_teacher(DistillConfig(check_teacher=False), EvalConfig(), None, None, None, cpu) == {}
    assert teacher_check.check_teacher(DistillConfig(), EvalConfig(), None, None, None, cpu, known=known) == known

    class EmptyTestSet:  # what the check reads of a dataset
        class_names = ["circle"]

        def __len__(self):
            return 0

    assert teacher_check.check_teacher(DistillConfig(), EvalConfig(), None, None, EmptyTestSet(), cpu) == {}


def test_the_demo_checks_its_teacher_except_in_the_quick_smoke_run(tmp_path):
    assert demo_configs(tmp_path)["icd"].distill.check_teacher
    assert not demo_configs(tmp_path, quick=True)["icd"].distill.check_teacher


def shifted_ap(module, monkeypatch, ap):
    """Make ``module``'s evaluate_detector report box AP ``ap`` (the rest of its numbers real)."""
    real = module.evaluate_detector

    def fake(*args, **kwargs):
        metrics = real(*args, **kwargs)
        if metrics:
            metrics["bbox/AP"] = ap
        return metrics

    monkeypatch.setattr(module, "evaluate_detector", fake)


def test_a_teacher_weaker_than_its_student_is_flagged_everywhere(tmp_path, tiny_overrides, empty_config,
                                                                 untrained, monkeypatch, capsys):
    """Constructed case: the teacher check measures 5 AP, the student evaluates at 20 AP (and a
    baseline at 30): the run, metrics.json, report.html and compare --baseline all say so."""
    from icdistill.engine import report

    shifted_ap(teacher_check, monkeypatch, 5.0)
    shifted_ap(report, monkeypatch, 20.0)
    student = tmp_path / "student"
    assert run_cli(empty_config, distill_args(student, tiny_overrides, untrained, "eval.report=true",
                                              "eval.period=1", "distill.check_teacher_min_ap=0")) == 0
    printed = capsys.readouterr().out
    assert printed.count("the teacher is weaker than the student") == 1  # once: at the first evaluation past it
    assert "teacher box AP 5.00" in printed and "student box AP 20.00 at iteration 1" in printed
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["teacher/weaker_than_student"] == 1.0 and metrics["teacher/exceeded_at_iter"] == 1.0
    assert "Teacher weaker than student" in (student / "report.html").read_text()

    shifted_ap(report, monkeypatch, 30.0)
    baseline = tmp_path / "baseline"
    assert main(["--no-progress", "train", str(empty_config), "--out", str(baseline),
                 *[f"--set={s}" for s in [*tiny_overrides, "solver.max_iter=1", "eval.viz_images=0"]]]) == 0
    capsys.readouterr()
    assert main(["compare", str(student), str(baseline), "--baseline", str(baseline), "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| student "))
    assert row.rstrip(" |").endswith("teacher weaker than student, below baseline")
    assert "has little to teach" in table
    assert "below baseline" in (tmp_path / "compare.html").read_text()


def test_a_teacher_above_its_student_is_not_flagged():
    from icdistill.teacher_vs_student import EXCEEDED_AT_KEY, WEAKER_KEY, note_student_ap, row_flags

    numbers = {"teacher/bbox/AP": 30.0}
    assert note_student_ap(numbers, 29.9, 10) is None
    assert numbers[WEAKER_KEY] == 0.0 and EXCEEDED_AT_KEY not in numbers
    assert note_student_ap({}, 50.0, 10) is None  # no teacher check: nothing to compare
    assert row_flags(29.9, 30.0, 29.0) == []
    assert row_flags(31.0, 30.0, None) == ["teacher weaker than student"]
