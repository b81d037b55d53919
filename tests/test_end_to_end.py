"""End to end through the CLI: train a teacher, distil a student, resume, evaluate, export."""

import json
import math
import shutil

import pytest
import torch

from icdistill.cli import main
from icdistill.files import load_checkpoint

TEACHER_SET = ["model.fpn_channels=48"]  # a wider teacher: ICD must project its tokens


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_overrides, empty_config):
    out = tmp_path_factory.mktemp("teacher")
    sets = [f"--set={s}" for s in [*tiny_overrides, *TEACHER_SET]]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(out), *sets]) == 0
    return out


def distill_sets(tiny_overrides, teacher_dir, *extra):
    return [
        f"--set={s}"
        for s in [
            *tiny_overrides,
            "distill.method=icd",
            "distill.warmup_iters=1",
            "distill.icd.decoder_warmup_iters=2",
            "teacher.family=retinanet",
            "teacher.backbone=resnet18",
            "teacher.fpn_channels=48",
            "teacher.anchor_sizes=[16, 32, 64, 128, 256]",
            f"teacher.weights={teacher_dir / 'detector.pt'}",
            *extra,
        ]
    ]


def test_teacher_run_writes_the_run_directory(teacher_run):
    for name in ("config.yaml", "prior.json", "metrics.jsonl", "metrics.json", "detector.pt", "checkpoints/last.pt"):
        assert (teacher_run / name).is_file(), name
    metrics = json.loads((teacher_run / "metrics.json").read_text())
    for key in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl", "time/train_s"):
        assert key in metrics
    assert (teacher_run / "tb").is_dir()
    student = load_checkpoint(teacher_run / "detector.pt")
    assert student["format"] == "icdistill-detector"
    assert not any(k.startswith(("icd.", "student.")) for k in student["model"])


def test_student_pt_loads_into_plain_torchvision(teacher_run):
    """detector.pt needs nothing of icdistill: torchvision's own classes rebuild the detector."""
    import torchvision
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    ckpt = load_checkpoint(teacher_run / "detector.pt")
    width = ckpt["model_config"]["fpn_channels"]
    body = torchvision.models.resnet18()
    backbone = BackboneWithFPN(
        body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], width,
        extra_blocks=LastLevelP6P7(width, width),
    )
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    model = torchvision.models.detection.RetinaNet(backbone, ckpt["torchvision_num_classes"], anchor_generator=anchors)
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 96)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_distill_end_to_end_and_resume_is_exact(teacher_run, tmp_path, tiny_overrides, empty_config):
    full = tmp_path / "full"
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(full),
                 *distill_sets(tiny_overrides, teacher_run, "eval.report=true")]) == 0
    log = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*log)
    assert {"distill/icd/idf", "distill/icd/reg", "distill/icd/feature", "det/classification"} <= keys
    # decoder warm-up stage: the first 2 logged steps have aux losses only
    assert "det/classification" not in log[0] and "distill/icd/feature" not in log[0]
    assert len(list((full / "viz").glob("attention_*.png"))) == 2
    assert len(list((full / "viz").glob("detections_*.png"))) == 2
    assert (full / "viz" / "training_curves.png").stat().st_size > 1000
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["bbox/AP"] >= 0
    # the decoder diagnostics are part of every ICD run's final metrics
    assert 0.0 <= metrics["icd/idf_auroc"] <= 1.0 and 0.0 < metrics["icd/attn_in_box_uniform"] < 1.0
    assert {"icd/attn_in_box", "icd/attn_distinct"} <= set(metrics)

    # interrupted at iteration 2 (the periodic snapshot), then resumed: identical final weights
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "model_0000002.pt", resumed / "checkpoints" / "last.pt")
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(resumed), "--resume",
                 *distill_sets(tiny_overrides, teacher_run)]) == 0
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    for key, value in a["trainable"].items():
        torch.testing.assert_close(b["trainable"][key], value, rtol=0, atol=0, msg=key)


def test_eval_and_export_from_cli(teacher_run, tmp_path, tiny_overrides, empty_config):
    sets = [f"--set={s}" for s in [*tiny_overrides, *TEACHER_SET]]
    out = tmp_path / "eval"
    assert main(["--no-progress", "eval", str(empty_config), "--weights", str(teacher_run / "checkpoints" / "last.pt"), "--out", str(out), *sets]) == 0
    from_last = json.loads((out / "metrics.json").read_text())
    assert from_last["bbox/AP"] == json.loads((teacher_run / "metrics.json").read_text())["bbox/AP"]
    exported = tmp_path / "exported.pt"
    assert main(["export", str(teacher_run / "checkpoints" / "last.pt"), "--out", str(exported)]) == 0
    a, b = load_checkpoint(exported)["model"], load_checkpoint(teacher_run / "detector.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stats_writes_the_prior(tmp_path, tiny_overrides, empty_config):
    out = tmp_path / "prior.json"
    assert main(["--no-progress", "stats", str(empty_config), "--out", str(out), *[f"--set={s}" for s in tiny_overrides]]) == 0
    prior = json.loads(out.read_text())
    assert prior["num_images"] == 12
    assert [c["name"] for c in prior["classes"]] == ["circle", "square", "triangle", "cross"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["teacher.backbone=resnet34"], "resnet"),
        (["teacher.fpn_channels=32"], "fpn_channels"),
        (["model.num_classes=7"], "7"),
        (["teacher.family=faster_rcnn"], "teacher"),
        (["solver.max_itr=3"], "solver.max_itr"),
    ],
)
def test_mismatches_are_reported_before_training(teacher_run, tmp_path, tiny_overrides, empty_config, capsys, extra, message):
    out = tmp_path / "bad"
    code = main(["--no-progress", "distill", str(empty_config), "--out", str(out), *distill_sets(tiny_overrides, teacher_run, *extra)])
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and message in err
    assert not (out / "checkpoints" / "last.pt").exists()


def test_missing_teacher_file_is_named(tmp_path, tiny_overrides, empty_config, capsys):
    missing = tmp_path / "nope" / "detector.pt"
    sets = distill_sets(tiny_overrides, tmp_path / "nope")
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(tmp_path / "x"), *sets]) == 2
    assert str(missing) in capsys.readouterr().err


def test_non_finite_loss_stops_with_step_and_names_and_keeps_last_checkpoint(tmp_path, tiny_config, monkeypatch):
    from icdistill.distill.core.distiller import Distiller
    from icdistill.engine.trainer import train
    from icdistill.errors import TrainingDivergedError

    original = Distiller.forward
    calls = {"n": 0}

    def exploding(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the third iteration (index 2) diverges
            losses["det/classification"] = losses["det/classification"] * float("nan")
        return losses

    monkeypatch.setattr(Distiller, "forward", exploding)
    cfg = tiny_config("solver.max_iter=4", "solver.checkpoint_period=2")
    with pytest.raises(TrainingDivergedError, match=r"iteration 2: det/classification"):
        train(cfg, tmp_path / "run", progress=False)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in last["trainable"].values() if v.is_floating_point())


def test_mask_rcnn_distils_end_to_end(tmp_path, tiny_config):
    """Mask R-CNN teacher -> Mask R-CNN student through ICD on p2-p6, with mask AP at the end."""
    from icdistill.engine.trainer import train

    mask = ["model.family=mask_rcnn", "model.anchor_sizes=[8, 16, 32, 64, 128]", "solver.max_iter=2",
            "eval.viz_images=0"]
    teacher = train(tiny_config(*mask), tmp_path / "teacher", progress=False)
    assert {"segm/AP", "segm/AP50", "bbox/AP"} <= set(teacher.metrics)
    result = train(
        tiny_config(*mask, "distill.method=icd", "teacher.family=mask_rcnn", "teacher.backbone=resnet18",
                    "teacher.fpn_channels=32", "teacher.anchor_sizes=[8, 16, 32, 64, 128]",
                    f"teacher.weights={tmp_path / 'teacher' / 'detector.pt'}", "distill.warmup_iters=0"),
        tmp_path / "icd", progress=False,
    )
    log = [json.loads(line) for line in (tmp_path / "icd" / "metrics.jsonl").read_text().splitlines()]
    assert "det/loss_mask" in log[-1] and "distill/icd/feature" in log[-1]
    assert "segm/AP" in result.metrics


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_a_gpu(tmp_path, tiny_config):
    from icdistill.engine.trainer import train
    from icdistill.errors import ConfigError

    result = train(tiny_config("solver.amp=bf16", "solver.max_iter=2", "eval.viz_images=0"), tmp_path / "bf16",
                   progress=False)
    log = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss/total"]) for r in log)
    assert "bbox/AP" in result.metrics
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16"):
            train(tiny_config("solver.amp=fp16"), tmp_path / "fp16", progress=False)


def test_periodic_evaluation_is_logged_and_timed_apart_from_training(tmp_path, tiny_config, monkeypatch):
    """eval.period: ``eval/``-prefixed records in metrics.jsonl; their time is time/eval_s, not
    time/train_s, also across a resume (the checkpoint keeps both)."""
    import time

    from icdistill.engine import report, trainer

    original = report.evaluate_detector

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(report, "evaluate_detector", slow)
    cfg = tiny_config("solver.max_iter=4", "eval.period=1", "eval.viz_images=0")
    started = time.perf_counter()
    trainer.train(cfg, tmp_path / "run", progress=False)
    wall = time.perf_counter() - started
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["time/eval_s"] >= 1.5  # periodic evaluations at iterations 1, 2, 3 (not 4, the last)
    assert metrics["time/train_s"] <= wall - 2.0  # neither the periodic nor the final evaluation
    assert metrics["time/iter_s"] == pytest.approx(metrics["time/train_s"] / 4, abs=2e-3)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval/bbox/AP" in r]
    assert [r["iter"] for r in evals] == [1, 2, 3]
    assert not any("bbox/AP" in r for r in log)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["eval_seconds"] == pytest.approx(metrics["time/eval_s"], abs=0.01)
    assert last["train_seconds"] <= metrics["time/train_s"]  # saved just before the end

    # resumed after iteration 2 (saved before that iteration's evaluation): one evaluation before, one after
    snapshot = load_checkpoint(tmp_path / "run" / "checkpoints" / "model_0000002.pt")
    assert snapshot["eval_seconds"] >= 0.5
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "run" / "checkpoints" / "model_0000002.pt", resumed / "checkpoints" / "last.pt")
    started = time.perf_counter()
    trainer.train(cfg, resumed, resume=True, progress=False)
    wall = time.perf_counter() - started
    again = json.loads((resumed / "metrics.json").read_text())
    assert again["time/eval_s"] >= snapshot["eval_seconds"] + 0.5  # + the evaluation at iteration 3
    assert snapshot["train_seconds"] < again["time/train_s"] <= snapshot["train_seconds"] + wall - 1.0
