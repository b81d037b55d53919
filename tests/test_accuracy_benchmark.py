"""benchmarks/accuracy.py: aggregation, the RESULTS.md section, and a --quick run that is reused."""

import importlib.util
import json
import math
import re
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl", "time/iter_s")


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_aggregate_mean_sample_std_and_missing_values(accuracy):
    seeds = [
        {"bbox/AP": 10.0, "bbox/APl": None, "bbox/APs": 1.0, "time/iter_s": 0.5},
        {"bbox/AP": 14.0, "bbox/APl": None, "bbox/APs": float("nan"), "time/iter_s": 0.7},
    ]
    agg = accuracy.aggregate(seeds)
    assert agg["seeds"] == seeds
    assert agg["mean"]["bbox/AP"] == 12.0
    assert agg["std"]["bbox/AP"] == pytest.approx(statistics.stdev([10.0, 14.0]))
    assert agg["mean"]["bbox/APl"] is None and agg["std"]["bbox/APl"] is None  # NaN everywhere -> null
    assert agg["mean"]["bbox/APs"] == 1.0 and agg["std"]["bbox/APs"] == 0.0  # the finite seeds only
    one = accuracy.aggregate([{"bbox/AP": 3.0}])
    assert one["mean"]["bbox/AP"] == 3.0 and one["std"]["bbox/AP"] == 0.0
    json.dumps({k: v for k, v in agg.items() if k != "seeds"}, allow_nan=False)


def test_results_section_is_replaced_between_its_markers(accuracy, tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\n## Speed\n\ntext\n\n## Not measured here\n\n- x\n")
    accuracy.write_results("first synthetic\n", "synthetic", doc)
    accuracy.write_results("bccd\n", "bccd", doc)
    accuracy.write_results("second synthetic\n", "synthetic", doc)
    text = doc.read_text()
    assert text.count("## Accuracy benchmark") == 1
    assert "first synthetic" not in text and text.count("second synthetic") == 1
    assert text.index("second synthetic") < text.index("bccd\n") < text.index("## Not measured here")
    assert text.count("<!-- accuracy benchmark synthetic: begin -->") == 1


def test_quick_synthetic_suite_writes_the_json_and_reuses_its_runs(accuracy, tmp_path, capsys):
    out, result = tmp_path / "out", tmp_path / "acc.json"
    args = ["--suite", "synthetic", "--quick", "--seeds", "0", "1", "--students", "baseline", "icd",
            "--out", str(out), "--json", str(result), "--no-results"]
    docs_before = (ROOT / "docs" / "RESULTS.md").stat().st_mtime_ns
    accuracy.main(args)
    assert capsys.readouterr().out.count(": trained ") == 5  # teacher + 2 students x 2 seeds

    raw = result.read_text()
    assert "NaN" not in raw
    data = json.loads(raw)
    assert set(data) == {"meta", "teacher", "students", "paired"}
    assert set(data["students"]) == {"baseline", "icd"}
    icd_ap = [s["bbox/AP"] for s in data["students"]["icd"]["seeds"]]
    base_ap = [s["bbox/AP"] for s in data["students"]["baseline"]["seeds"]]
    vs_base = data["paired"]["icd"]["baseline"]
    assert vs_base["n"] == 2 and vs_base["mean"] == pytest.approx(statistics.fmean(a - b for a, b in zip(icd_ap, base_ap)))
    assert set(data["paired"]["baseline"]) == {"icd"}
    assert data["meta"]["seeds"] == [0, 1] and data["meta"]["layout"]["jobs"] == 1
    assert {"bbox/AP", "time/iter_s", "time/eval_s"} <= set(data["teacher"])
    for name, student in data["students"].items():
        assert set(student) == {"seeds", "mean", "std", "machines"} and len(student["seeds"]) == 2
        assert len(student["machines"]) == 2 and len(set(student["machines"])) == 1  # both seeds here
        saved = json.loads((out / name / "seed0" / "metrics.json").read_text())
        assert student["seeds"][0] == saved and set(student["mean"]) == set(saved)
        for key in METRICS:
            values = [s[key] for s in student["seeds"] if s[key] is not None]
            if values:
                assert student["mean"][key] == pytest.approx(statistics.fmean(values))
                assert math.isfinite(student["std"][key])
            else:
                assert student["mean"][key] is None
        # the periodic evaluations that the plot reads (eval.period = 4 in --quick)
        log = [json.loads(line) for line in (out / name / "seed0" / "metrics.jsonl").read_text().splitlines()]
        assert any("eval/bbox/AP" in r for r in log)
        assert (out / name / "seed1" / "command.txt").read_text().startswith("icdistill ")
    png = out / "accuracy_synthetic.png"
    compare = (out / "compare.html").read_text()  # icdistill compare of the suite's runs
    assert data["meta"]["compare"] == str(out / "compare.html") and all(f">{n}/seed0<" in compare for n in ("baseline", "icd"))
    assert png.stat().st_size > 1000

    runs = sorted(out.glob("*/seed*/metrics.json")) + [out / "teacher" / "metrics.json"]
    mtimes = {p: p.stat().st_mtime_ns for p in runs}
    again = accuracy.main(args)
    printed = capsys.readouterr().out
    assert printed.count(": cached ") == 5 and ": trained " not in printed
    assert {p: p.stat().st_mtime_ns for p in runs} == mtimes
    assert again["students"] == data["students"] and again["teacher"] == data["teacher"]
    assert (ROOT / "docs" / "RESULTS.md").stat().st_mtime_ns == docs_before


# ---- rows, suites, the validation split and the sweep (#10.5, #11.5, #12.7) ----------------------

def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (it imports accuracy.py from beside itself)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep(accuracy):
    return load_benchmark("sweep")


@pytest.fixture
def bccd_root(tmp_path):
    (tmp_path / "bccd" / "ImageSets" / "Main").mkdir(parents=True)  # planning reads no images
    return str(tmp_path / "bccd")


def plan_for(accuracy, tmp_path, *argv):
    args = accuracy.parse_args(list(argv))
    return args, accuracy.make_plan(args, tmp_path / "out")


def test_rows_use_the_methods_own_recipes_or_the_icd_recipe(accuracy, tmp_path, bccd_root):
    args, plan = plan_for(accuracy, tmp_path, "--suite", "bccd", "--bccd-root", bccd_root)
    assert args.seeds == [0, 1, 2, 3, 4] and set(accuracy.METHODS) | {"baseline", "icd", "icd_inherit"} <= set(args.students)
    for method in accuracy.METHODS:
        run = plan.student(method, 0)
        assert run.recipe.name == f"bccd_{method}.yaml" and run.cfg.distill.method == method
        assert run.teacher_pt == tmp_path / "out" / "teacher" / "detector.pt"
        assert run.cfg.teacher.weights == str(run.teacher_pt) and run.cfg.data.voc.train_splits == ("trainval",)
    ablation = {n: plan.student(n, 1).cfg.distill
                for n in ("icd", "icd_uniform", "icd_gtbox", "icd_prior", "icd_paper_warm3k")}
    assert set(ablation) - {"icd"} == set(accuracy.ABLATION_ROWS) and set(accuracy.ABLATION_ROWS) <= set(args.students)
    assert [d.icd.ablation_weights for d in ablation.values()] == [None, "uniform", "gt_box", None, None]
    assert [d.icd.position_prior for d in ablation.values()] == [False, False, False, True, False]
    assert [d.icd.decoder_warmup_iters for d in ablation.values()] == [200, 200, 200, 200, 3000]
    assert plan.student("icd", 1).out == tmp_path / "out" / "icd" / "seed1"  # existing rows keep their names
    meta = accuracy.row_meta(plan, [plan.student(n, 0) for n in ("baseline", "mimic", "icd_gtbox")])
    assert meta["mimic"] == {"recipe": "configs/voc/bccd_mimic.yaml", "sets": [], "source": "the method's own recipe",
                             "loss_weight": 1.0, "loss_weight_from": "recipe"}
    assert meta["icd_gtbox"]["sets"] == ["distill.icd.ablation_weights=gt_box"] and meta["icd_gtbox"]["loss_weight"] == 8.0
    assert meta["baseline"]["loss_weight"] is None
    # synthetic has no per-method recipes: the ICD recipe with distill.method
    _, synthetic = plan_for(accuracy, tmp_path, "--suite", "synthetic")
    gid = synthetic.student("gid", 0)
    assert gid.recipe.name == "icd.yaml" and gid.cfg.distill.method == "gid"
    assert accuracy.row_recipe("synthetic", "gid")[1:] == (["distill.method=gid"], "ICD recipe + distill.method")


def test_c4_dc5_suites_and_quick_overrides_per_data_set(accuracy, tmp_path, bccd_root):
    for suite, family in (("bccd_c4", "faster_rcnn_c4"), ("bccd_dc5", "faster_rcnn_dc5")):
        args, plan = plan_for(accuracy, tmp_path, "--suite", suite, "--bccd-root", bccd_root, "--quick")
        assert args.students == ["baseline", "icd"] and args.seeds == [0]
        teacher, icd = plan.teacher(), plan.student("icd", 0)
        assert teacher.recipe.name == f"{suite}_teacher.yaml" and teacher.cfg.model.family == family
        assert icd.recipe.name == f"{suite}_icd.yaml" and icd.cfg.teacher.family == family
        # bccd's quick data overrides, whatever the suite's name
        assert teacher.cfg.data.max_size == 96 and teacher.cfg.solver.max_iter == 8 and icd.cfg.solver.max_iter == 6
    assert accuracy.default_out(args).name == "bccd_dc5-quick"
    # the cross-architecture suite: the demo's FCOS teacher, a RetinaNet student on the same strides
    args, plan = plan_for(accuracy, tmp_path, "--suite", "synthetic_retinanet")
    teacher, base, icd = plan.teacher(), plan.student("baseline", 0), plan.student("icd", 0)
    assert args.seeds == [0] and teacher.cfg.model.family == "fcos" and icd.cfg.teacher.family == "fcos"
    assert base.cfg.model.family == icd.cfg.model.family == "retinanet" and icd.cfg.distill.inherit is False
    assert icd.cfg.solver == base.cfg.solver and icd.cfg.data == teacher.cfg.data
    # ... and on BCCD: a Cascade R-CNN teacher, Faster R-CNN students
    args, plan = plan_for(accuracy, tmp_path, "--suite", "bccd_cascade", "--bccd-root", bccd_root)
    teacher, base, icd = plan.teacher(), plan.student("baseline", 0), plan.student("icd", 0)
    assert args.seeds == [0] and teacher.cfg.model.family == icd.cfg.teacher.family == "cascade_rcnn"
    assert base.cfg.model.family == icd.cfg.model.family == "faster_rcnn" and icd.cfg.distill.inherit is False
    assert icd.cfg.teacher.backbone == teacher.cfg.model.backbone == "resnet34"
    assert icd.cfg.teacher.fpn_channels == teacher.cfg.model.fpn_channels == 64
    assert icd.cfg.solver == base.cfg.solver and icd.cfg.data == base.cfg.data == teacher.cfg.data


def section_meta(suite: str, models: dict[str, str]) -> dict:
    """The least ``meta`` that ``results_section`` renders: one seed, one job, placeholder hardware."""
    return {"suite": suite, "command": "c", "date": "d", "wall_s": 60.0, "runs_trained": len(models) - 1,
            "runs_cached": 0, "seeds": [0], "recipes": {}, "evaluator": "coco", "skipped": {},
            "hardware": {"machine": "m", "processor": "p", "cpu_count": 2, "gpu": None, "torch": "t"},
            "layout": {"jobs": 1, "threads_per_job": 1, "teacher_threads": 2}, "models": models}


def test_condinst_suite_trains_on_masks_and_its_table_adds_mask_ap(accuracy, tmp_path):
    args, plan = plan_for(accuracy, tmp_path, "--suite", "synthetic_condinst")
    teacher, base, icd = plan.teacher(), plan.student("baseline", 0), plan.student("icd", 0)
    assert args.students == ["baseline", "icd"] and args.seeds == [0]
    assert {teacher.cfg.model.family, base.cfg.model.family, icd.cfg.model.family, icd.cfg.teacher.family} == {"condinst"}
    assert icd.cfg.solver == base.cfg.solver and teacher.cfg.data.format == "shapes"
    row = {"bbox/AP": 20.0, "segm/AP": 18.25, "segm/AP50": 30.0, "segm/AP75": None, "time/iter_s": 1.0}
    agg = accuracy.aggregate([row])
    meta = section_meta("synthetic_condinst", {"teacher": "t", "baseline": "b"})
    section = accuracy.results_section({"meta": meta, "teacher": row, "students": {"baseline": agg}}, "p.png")
    header = next(ln for ln in section.splitlines() if ln.startswith("| model"))
    assert "| APl | mask AP | mask AP50 | mask AP75 | s/iter |" in header
    assert "| 18.2 ± 0.0 | 30.0 ± 0.0 | n/a |" in section
    # a box family's table has no mask columns
    box = {"meta": meta, "teacher": {"bbox/AP": 20.0}, "students": {"baseline": accuracy.aggregate([{"bbox/AP": 1.0}])}}
    assert "mask AP" not in accuracy.results_section(box, "p.png")


def test_validation_split_trains_and_evaluates_inside_the_training_data(accuracy, tmp_path, bccd_root):
    args, plan = plan_for(accuracy, tmp_path, "--suite", "bccd", "--split", "validation", "--bccd-root", bccd_root)
    assert args.key == "bccd_validation" and accuracy.default_out(args).name == "bccd-validation"
    for run in (plan.teacher(), plan.student("baseline", 0), plan.student("fgfi", 2)):
        assert run.cfg.data.voc.train_splits == ("train",) and run.cfg.data.voc.test_splits == ("val",)
    assert accuracy.split_names(plan.teacher()) == {"train": "train", "evaluated on": "val"}
    args, plan = plan_for(accuracy, tmp_path, "--suite", "synthetic", "--split", "validation")
    assert plan.teacher().cfg.data.shapes.seed == 1 and plan.student("icd", 0).cfg.data.shapes.seed == 1
    _, test_plan = plan_for(accuracy, tmp_path, "--suite", "synthetic")
    assert test_plan.teacher().cfg.data.shapes.seed == 0  # the test images: another seed's


def test_weights_from_a_sweep_set_each_rows_loss_weight(accuracy, tmp_path, bccd_root):
    chosen = tmp_path / "sweep.json"
    chosen.write_text(json.dumps({"chosen": {"icd": 4.0, "fitnet": 0.5, "gid": None}}))
    _, plan = plan_for(accuracy, tmp_path, "--suite", "bccd", "--bccd-root", bccd_root, "--weights-from", str(chosen))
    weight = {n: accuracy.default_loss_weight(plan.student(n, 0).cfg)
              for n in ("baseline", "fitnet", "icd", "icd_uniform", "icd_inherit", "gid", "fgfi")}
    assert weight == {"baseline": None, "fitnet": 0.5, "icd": 4.0, "icd_uniform": 4.0, "icd_inherit": 4.0,
                      "gid": 1.0, "fgfi": 3.0}
    assert accuracy.row_meta(plan, [plan.student("icd_prior", 0)])["icd_prior"]["loss_weight_from"] == "sweep"
    chosen.write_text("{}")
    with pytest.raises(SystemExit, match="not a sweep's JSON"):
        plan_for(accuracy, tmp_path, "--suite", "bccd", "--bccd-root", bccd_root, "--weights-from", str(chosen))


def test_sweep_grids_share_the_validation_runs(accuracy, sweep, tmp_path, bccd_root):
    args = sweep.parse_args(["--suite", "bccd", "--bccd-root", bccd_root, "--seeds", "0", "1"])
    assert args.rows == ["fitnet", "icd", "mimic", "fgfi", "fbkd", "gid", "defeat", "chen2017",
                         "cwd", "fgd", "mgd", "pkd", "crosskd"]
    plan = accuracy.make_plan(args, tmp_path / "out")
    table, runs = sweep.sweep_runs(plan, args.rows, args.seeds)
    assert table["icd"]["grid"] == [2, 4, 8, 16, 32] and table["icd"]["default"] == 8.0  # x 0.25 ... 4 like every row
    assert table["fgfi"]["grid"] == [0.75, 1.5, 3, 6, 12] and table["mimic"]["grid"] == [0.25, 0.5, 1, 2, 4]
    assert len(runs) == 13 * 5 * 2  # the same budget for every method
    by_name = {(r.name, r.seed): r for r in runs}
    default, other = by_name[("icd@8", 1)], by_name[("icd@2", 1)]
    assert default.out == plan.student("icd", 1).out and default.cfg == plan.student("icd", 1).cfg
    assert other.out == tmp_path / "out" / "sweep" / "icd" / "w2" / "seed1" and other.cfg.distill.icd.loss_weight == 2.0
    assert all(r.cfg.data.voc.test_splits == ("val",) for r in runs[::7])
    pts = lambda *m: [{"loss_weight": w, "mean": v} for w, v in zip((1.0, 2.0, 4.0), m)]  # noqa: E731
    assert sweep.choose(pts(1.0, 3.0, 2.0), 4.0) == 2.0
    assert sweep.choose(pts(3.0, 3.0, 3.0), 4.0) == 4.0 and sweep.choose(pts(3.0, 3.0, 1.0), 4.0) == 1.0
    assert sweep.choose(pts(None, None, None), 4.0) is None


def test_quick_sweep_end_to_end(sweep, tmp_path, capsys):
    out, result = tmp_path / "sweep", tmp_path / "sweep.json"
    argv = ["--suite", "synthetic", "--quick", "--rows", "fitnet", "--multipliers", "0.5", "1", "--out", str(out),
            "--set", "eval.report=false",
            "--json", str(result), "--no-results"]
    docs_before = (ROOT / "docs" / "RESULTS.md").stat().st_mtime_ns
    data = sweep.main(argv)
    assert len(re.findall(r"seed \S+: trained ", capsys.readouterr().out)) == 3  # teacher + 2 weights
    saved = json.loads(result.read_text())
    assert saved["chosen"] == data["chosen"] and saved["chosen"]["fitnet"] in (0.5, 1.0)
    points = saved["rows"]["fitnet"]["points"]
    assert [p["loss_weight"] for p in points] == [0.5, 1.0]
    assert all(set(p["bbox/AP"]) == {"0"} and p["mean"] == p["bbox/AP"]["0"] for p in points)
    assert yaml.safe_load((out / "sweep" / "fitnet" / "w0.5" / "seed0" / "config.yaml").read_text())["distill"]["fitnet"]["loss_weight"] == 0.5
    assert (out / "fitnet" / "seed0" / "metrics.json").is_file() and saved["meta"]["split"] == "validation"
    assert saved["meta"]["splits"] == {"train": "shapes seed 1 train", "evaluated on": "shapes seed 1 test"}
    assert (out / "sweep_synthetic.png").stat().st_size > 1000
    sweep.main(argv)
    assert len(re.findall(r"seed \S+: cached ", capsys.readouterr().out)) == 3
    assert (ROOT / "docs" / "RESULTS.md").stat().st_mtime_ns == docs_before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_benchmark_leaves_no_worker_training(tmp_path):
    """--jobs workers die with the benchmark process: a killed benchmark's runs stop writing
    into folders the rerun clears (before, they trained on and broke the rerun's TensorBoard)."""
    import os
    import signal
    import subprocess
    import time

    script = tmp_path / "bench.py"
    script.write_text(
        "import concurrent.futures as cf, multiprocessing, os, sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import accuracy\n"
        "if __name__ == '__main__':\n"
        "    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "                                  initializer=accuracy.die_with_parent)\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n")
    bench = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(bench.stdout.readline())
    os.kill(bench.pid, signal.SIGKILL)
    bench.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the pool worker outlived the killed benchmark")


def test_records_let_a_fresh_checkout_reuse_finished_runs(accuracy, tmp_path, capsys):
    """A run's record (benchmarks/records.py) is restored into an empty out folder and reused; a
    record whose config is not what would run now is retrained and replaced."""
    out, records = tmp_path / "out", tmp_path / "records"
    args = ["--suite", "synthetic", "--quick", "--seeds", "0", "--students", "baseline", "icd",
            "--out", str(out), "--records", str(records), "--no-results"]
    first = accuracy.main(args)
    assert capsys.readouterr().out.count(": trained ") == 3
    teacher_pt = (out / "teacher" / "detector.pt").read_bytes()
    for run in ("teacher", "baseline/seed0", "icd/seed0"):
        saved = records / run
        assert {"config.yaml", "metrics.json", "metrics.jsonl", "benchmark_stamp.json", "record.json"} <= {
            p.name for p in saved.iterdir()}
        assert str(out) not in (saved / "config.yaml").read_text()  # portable: ${OUT}, ${ROOT}
    assert (records / "teacher" / "detector.pt").read_bytes() == teacher_pt
    assert not (records / "icd" / "seed0" / "detector.pt").exists()  # students: small files only

    shutil.rmtree(out)  # a fresh checkout: no run folders, only the records
    again = accuracy.main(args)
    printed = capsys.readouterr().out
    assert printed.count(": record ") == 3 and ": trained " not in printed
    assert again["students"] == first["students"] and again["teacher"] == first["teacher"]
    assert (out / "teacher" / "detector.pt").read_bytes() == teacher_pt
    assert again["meta"]["runs_cached"] == 3 and len(again["meta"]["recorded_on"]) == 1
    assert "Runs trained on: " in accuracy.results_section(again, "x.png")

    shutil.rmtree(out)
    stale = records / "icd" / "seed0" / "config.yaml"
    stale.write_text(stale.read_text().replace("loss_weight:", "loss_weight: 123.0\n  old_loss_weight:", 1))
    accuracy.main(args)
    printed = capsys.readouterr().out
    assert printed.count(": record ") == 2 and printed.count(": trained ") == 1  # only icd retrained
    assert "old_loss_weight" not in stale.read_text()  # its record replaced by the new run's

    # a stale local run folder (here: made with another loss weight) does not hide a matching record
    local = out / "icd" / "seed0" / "config.yaml"
    local.write_text(local.read_text().replace("loss_weight:", "loss_weight: 123.0\n  old_loss_weight:", 1))
    accuracy.main(args)
    printed = capsys.readouterr().out
    assert ": trained " not in printed and printed.count(": cached ") == 2 and printed.count(": record ") == 1
    assert "old_loss_weight" not in local.read_text()  # the folder holds the record's run again


def test_results_table_lists_rows_in_the_canonical_order_not_the_command_line_order(accuracy):
    agg = accuracy.aggregate([{"bbox/AP": 1.0}])
    meta = section_meta("bccd", {"teacher": "t", "mimic": "m", "baseline": "b", "icd": "i"})
    students = {"mimic": agg, "icd": agg, "baseline": agg}  # the order --students gave
    section = accuracy.results_section({"meta": meta, "teacher": {"bbox/AP": 2.0}, "students": students}, "p.png")
    names = [ln.split(" (")[0][2:] for ln in section.splitlines() if ln.startswith("| ") and " (" in ln]
    assert names == ["teacher", "baseline", "icd", "mimic"]


# ---- statistics a reader can trust (#22) -----------------------------------------------------------

@pytest.fixture(scope="module")
def paired():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paired as module

    return module


def test_paired_interval_on_known_numbers(paired):
    # differences 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776 -> half-width 2.776 * 1.5811 / sqrt(5) = 1.963
    result = paired.paired_interval([11, 12, 13, 14, 15], [10, 10, 10, 10, 10])
    assert result["n"] == 5 and result["mean"] == 3.0
    assert result["low"] == pytest.approx(1.037, abs=1e-3) and result["high"] == pytest.approx(4.963, abs=1e-3)
    assert result["resolved"] and paired.describe_interval(result) == "+3.0 [+1.0, +5.0] resolved"
    noisy = paired.paired_interval([12, 8, 13, 7], [10, 10, 10, 10])  # mean 0.5, wide
    assert not noisy["resolved"] and noisy["low"] < 0 < noisy["high"]
    assert paired.describe_interval(noisy).endswith("not resolved")
    worse = paired.paired_interval([9.0, 8.9, 9.1], [10.0, 10.0, 10.0])
    assert worse["resolved"] and worse["high"] < 0  # resolved below
    assert paired.paired_interval([1.0, None], [0.0, 0.0])["low"] is None  # one pair: no interval
    assert paired.t975(1) == 12.706 and paired.t975(35) == 2.042 and paired.t975(500) == 1.960
    with pytest.raises(ValueError):
        paired.t975(0)


def section_data(accuracy, processors):
    seeds = lambda *aps: {"seeds": [{"bbox/AP": a} for a in aps], "mean": {"bbox/AP": sum(aps) / len(aps)},  # noqa: E731
                          "std": {"bbox/AP": 0.0}}
    students = {"baseline": seeds(10, 11, 12, 10, 11), "icd": seeds(14, 15, 16, 15, 14),
                "mimic": seeds(9, 13, 12, 8, 14), "fgfi_inherit": seeds(20, 21, 22, 20, 21)}
    provenance = {f"{n}/seed{k}": {"recorded": "2026-12-07", "hardware": {"processor": processors[k % len(processors)]}}
                  for n in students for k in range(5)}
    meta = {"suite": "bccd", "command": "python benchmarks/accuracy.py --suite bccd", "date": "2026-12-07",
            "hardware": {"machine": "x86_64", "processor": processors[0], "cpu_count": 2, "gpu": None, "torch": "2"},
            "layout": {"jobs": 1, "threads_per_job": 1, "teacher_threads": 1}, "wall_s": 60.0, "runs_trained": 0,
            "runs_cached": 20, "seeds": [0, 1, 2, 3, 4], "recipes": {}, "evaluator": "coco", "skipped": {},
            "provenance": provenance, "recorded_on": [],
            "models": {n: "fcos mobilenet_v2, 250 it" for n in ["teacher", *students]}}
    data = {"meta": meta, "teacher": {"bbox/AP": 19.0}, "students": students}
    data["paired"] = accuracy.paired_differences(students)
    return data


def test_results_section_says_which_rows_are_resolved_and_marks_adaptations(accuracy):
    text = accuracy.results_section(section_data(accuracy, ["Intel Xeon"]), "x.png")
    # icd − baseline per seed 4, 4, 4, 5, 3: mean 4, sd 0.707, t(4) 2.776 -> ± 0.88
    assert "| icd | +4.0 [+3.1, +4.9] resolved |  |" in text
    assert "| mimic | +0.4 [" in text and "not resolved" in text.split("| mimic |")[1].splitlines()[0]
    assert "mimic [ADAPT] (fcos" in text and "icd [ADAPT]" not in text and "fgfi_inherit [ADAPT]" in text
    assert "ICD − baseline +4.0 [+3.1, +4.9] resolved (target: interval above 0: met)" in text
    assert "teacher weaker than fgfi_inherit" in text
    assert "one machine type: Intel Xeon" in text and "WARNING" not in text


def test_a_training_rule_sets_every_student_and_leaves_the_teacher(accuracy, variance, tmp_path, bccd_root):
    """``--rule``/``--max-iter``: the students train with the rule variance.py chose, exactly as
    variance.py's runs do; the teacher (shared by every benchmark of the split) keeps its recipe."""
    args, plan = plan_for(accuracy, tmp_path, "--suite", "bccd", "--bccd-root", bccd_root, "--split", "validation",
                          "--rule", "cosine_ema", "--max-iter", "500")
    teacher, recipe_teacher = plan.teacher().cfg.solver, accuracy.load_config(accuracy.suite_recipes("bccd")["teacher"])
    assert teacher.max_iter == recipe_teacher.solver.max_iter and not teacher.ema
    for row in ("baseline", "icd", "pkd"):
        solver = plan.student(row, 3).cfg.solver
        assert (solver.lr_schedule, solver.ema, solver.max_iter, solver.seed) == ("cosine", True, 500, 3)
        assert solver.ema_decay == pytest.approx(0.992) and solver.ema_tau == 50
    assert plan.student("baseline", 0).cfg.eval.period == 100  # max_iter // 5 of the rule's schedule
    assert variance.rule_sets("cosine_ema", 500) == accuracy.rule_sets("cosine_ema", 500) == list(plan.student_sets)
    meta = {"rule": args.rule, "student_sets": list(plan.student_sets)}
    assert accuracy.rule_clause(meta).startswith("Students' training rule `cosine_ema`: `solver.lr_schedule=cosine`")
    assert accuracy.rule_clause({"rule": None}) == ""
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--suite", "bccd", "--max-iter", "500"])  # a schedule without a rule
    sweep = load_benchmark("sweep")
    assert sweep.parse_args(["--suite", "bccd", "--rule", "step", "--max-iter", "500"]).rule == "step"


def test_pairs_count_only_where_both_runs_share_a_machine_type(accuracy):
    """A suite that spans sittings gets other machines: seed 3 of the ICD row trained on another
    CPU than the baseline's seed 3 is no pair, and the cell says how many pairs it rests on."""
    data = section_data(accuracy, ["AMD EPYC"])
    for name, d in data["students"].items():
        d["machines"] = ["AMD EPYC"] * 5
    data["students"]["icd"]["machines"][3] = "Intel Xeon"
    data["meta"]["provenance"]["icd/seed3"]["hardware"]["processor"] = "Intel Xeon"
    data["paired"] = accuracy.paired_differences(data["students"])
    # icd − baseline without seed 3: 4, 4, 4, 3 -> mean 3.75
    assert data["paired"]["icd"]["baseline"]["n"] == 4 and data["paired"]["icd"]["baseline"]["mean"] == 3.75
    assert data["paired"]["mimic"]["baseline"]["n"] == 5
    text = accuracy.results_section(data, "x.png")
    assert "| icd | +3.8 [" in text and "(4 of 5 pairs)" in text.split("| icd |")[1].splitlines()[0]
    assert "a seed counts as a pair only where both runs share a machine type" in text


def test_runs_of_a_group_trained_elsewhere_wait_and_rows_run_seed_major(accuracy, tmp_path, bccd_root):
    """Seed-major order completes whole seeds per sitting; a seed whose other rows were trained
    on another machine type goes last, so this machine completes the seeds it can pair."""
    _, plan = plan_for(accuracy, tmp_path, "--suite", "bccd", "--bccd-root", bccd_root)
    runs = accuracy.student_runs(plan, ["baseline", "icd"], [0, 1, 2])
    assert [(r.name, r.seed) for r in runs[:3]] == [("baseline", 0), ("icd", 0), ("baseline", 1)]
    out = plan.out
    records = accuracy.Records(tmp_path / "records", out, {})
    here = {"processor": "AMD EPYC", "gpu": None}
    elsewhere = records.record_dir(out / "baseline" / "seed1")  # seed 1's baseline came from an Intel sitting
    elsewhere.mkdir(parents=True)
    (elsewhere / "record.json").write_text('{"recorded": "2026-12-08", "hardware": {"processor": "Intel Xeon"}}')
    states = {r.out: "fresh" for r in runs}
    states[out / "baseline" / "seed1"] = "record"
    todo = [r for r in runs if states[r.out] == "fresh"]
    order = accuracy.schedule(todo, runs, states, records, here, lambda r: r.seed)
    assert [(r.name, r.seed) for r in order] == [("baseline", 0), ("icd", 0), ("baseline", 2), ("icd", 2), ("icd", 1)]
    assert accuracy.run_machine(runs[2], records, here) == "Intel Xeon (details not recorded)"
    assert accuracy.run_machine(runs[0], records, here) == "AMD EPYC (details not recorded)"
    assert accuracy.schedule(todo, runs, states, None, here, lambda r: r.seed) == todo


def test_other_references_give_their_own_columns_and_section(accuracy, tmp_path):
    """ICD's defaults are compared against the paper's design (``--references``), in a RESULTS
    section of their own (``--key``) beside the suite's table."""
    data = section_data(accuracy, ["Intel Xeon"])
    data["meta"].update(references=["baseline", "mimic"], key="bccd_icd_defaults", split="validation")
    data["paired"] = accuracy.paired_differences(data["students"], ["baseline", "mimic"])
    text = accuracy.results_section(data, "x.png")
    assert "### bccd — bccd_icd_defaults — validation split" in text
    assert "| row | − baseline | − mimic |" in text
    # icd − mimic per seed 5, 2, 4, 7, 0: mean 3.6, sd 2.70, t(4) 2.776 -> ± 3.35
    assert "| icd | +4.0 [+3.1, +4.9] resolved | +3.6 [+0.2, +7.0] resolved |" in text
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Not measured here\n")
    accuracy.write_results("table A\n", "bccd_validation", results)
    accuracy.write_results("table B\n", "bccd_icd_defaults", results)
    assert "table A" in results.read_text() and "table B" in results.read_text()
    args = accuracy.parse_args(["--suite", "bccd", "--split", "validation", "--references", "baseline",
                                "icd_paper_lr1x", "--key", "bccd_icd_defaults"])
    assert args.key == "bccd_icd_defaults" and args.references == ["baseline", "icd_paper_lr1x"]
    assert accuracy.parse_args(["--suite", "bccd", "--split", "validation"]).key == "bccd_validation"
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--suite", "bccd", "--key", "../x y"])


def test_results_section_warns_when_rows_come_from_different_machines(accuracy, capsys):
    data = section_data(accuracy, ["Intel Xeon", "AMD EPYC"])
    assert ("**WARNING: these rows were trained on different machine types (AMD EPYC (details not recorded); "
            "Intel Xeon (details not recorded)).**") in \
        accuracy.results_section(data, "x.png")
    accuracy.warn_about_machines(data["meta"])
    assert "different machine types" in capsys.readouterr().err


def test_inheriting_is_a_switch_for_every_row(accuracy, tmp_path, bccd_root):
    _, plan = plan_for(accuracy, tmp_path, "--suite", "bccd", "--bccd-root", bccd_root)
    suite = accuracy.SUITES["bccd"]
    assert {"baseline_inherit", "icd_inherit", "fitnet_inherit", "fgfi_inherit", "defeat_inherit"} <= set(suite.rows)
    args = accuracy.parse_args(["--suite", "bccd", "--bccd-root", bccd_root])
    assert args.students == list(suite.rows) and "fgfi_inherit" not in suite.students  # the suite setting adds them
    assert list(suite.seeds) == [0, 1, 2, 3, 4]
    base = plan.student("baseline_inherit", 0)
    assert base.cfg.distill.method == "none" and base.cfg.distill.inherit and base.cfg.teacher.weights
    assert base.command().startswith("icdistill train ")
    fgfi = plan.student("fgfi_inherit", 0)
    assert fgfi.cfg.distill.method == "fgfi" and fgfi.cfg.distill.inherit
    assert fgfi.recipe.name == "bccd_fgfi.yaml"


@pytest.fixture(scope="module")
def variance(accuracy):
    return load_benchmark("variance")


def test_variance_rules_run_on_the_validation_split(accuracy, variance, tmp_path, bccd_root):
    args = variance.parse_args(["--suite", "bccd", "--bccd-root", bccd_root])
    assert args.rules == ["step", "step_ema", "cosine", "cosine_ema"] and args.seeds == [0, 1, 2, 3, 4]
    plan = accuracy.make_plan(args, tmp_path / "out")
    runs = variance.variance_runs(plan, ["step", "cosine_ema"], [0, 1, 2], 500)
    assert len(runs) == 2 * (3 + 1)
    ema = next(r for r in runs if r.name == "cosine_ema" and r.seed == 1)
    assert ema.cfg.solver.lr_schedule == "cosine" and ema.cfg.solver.ema and ema.cfg.solver.max_iter == 500
    assert ema.cfg.solver.ema_decay == pytest.approx(0.992) and ema.cfg.solver.ema_tau == 50
    assert ema.cfg.data.voc.test_splits == ("val",) and ema.cfg.distill.method == "none"
    repeat = [r for r in runs if r.name == "step-repeat"]
    assert len(repeat) == 1 and repeat[0].seed == 0 and repeat[0].out.name == "seed0-repeat"
    assert repeat[0].cfg == next(r for r in runs if r.name == "step" and r.seed == 0).cfg
    with pytest.raises(SystemExit, match="unknown training rule"):
        variance.rule_sets("linear", 100)


def test_quick_variance_is_deterministic_and_resumable(variance, tmp_path, capsys):
    """The determinism check: two runs of one recipe and seed give the same AP."""
    out, result = tmp_path / "variance", tmp_path / "variance.json"
    argv = ["--suite", "synthetic", "--quick", "--rules", "cosine_ema", "--seeds", "0", "1", "--out", str(out),
            "--set", "eval.report=false", "--json", str(result), "--no-results"]
    data = variance.main(argv)
    row = data["rules"]["cosine_ema"]
    assert row["repeat_diff"] == 0.0 and set(row["bbox/AP"]) == {"0", "1"}
    assert json.loads(result.read_text())["rules"] == data["rules"]
    assert "| cosine_ema |" in variance.section(data)
    capsys.readouterr()
    variance.main(argv)
    assert len(re.findall(r": cached ", capsys.readouterr().out)) == 4  # teacher + 2 seeds + the repeat


def test_same_config_keeps_a_record_when_only_a_default_option_was_added(accuracy):
    from icdistill.config import load_config

    cfg = load_config(None, ["distill.method=icd", "solver.max_iter=7"])
    saved = cfg.to_dict()
    assert accuracy.same_config(saved, cfg)
    # a run recorded before distill.crosskd.pkd_weight existed: the key is missing, its default is 0
    older = yaml.safe_load(yaml.safe_dump(saved))
    del older["distill"]["crosskd"]["pkd_weight"]
    assert accuracy.same_config(older, cfg)
    # ... but not when the current run sets the new option away from its default
    assert not accuracy.same_config(older, load_config(None, ["distill.method=icd", "solver.max_iter=7",
                                                            "distill.crosskd.pkd_weight=1.0"]))
    changed = yaml.safe_load(yaml.safe_dump(saved))
    changed["solver"]["max_iter"] = 8
    assert not accuracy.same_config(changed, cfg)
    unknown = yaml.safe_load(yaml.safe_dump(saved))
    unknown["solver"]["no_such_option"] = 1
    assert not accuracy.same_config(unknown, cfg)
    assert not accuracy.same_config(None, cfg)  # an empty file is the default config, not this run


def test_same_config_reads_a_renamed_key_silently(accuracy, monkeypatch, caplog):
    """A record saved with the flat data keys of before 2026-12-07 is the same run, and checking
    it prints no renaming notice (the notice is for a user's config, not for a record lookup)."""
    import logging

    import icdistill.config as config
    from icdistill.config import load_config

    monkeypatch.setattr(config, "_WARNED", set())  # the notice is printed once per process
    cfg = load_config(None, ["data.format=voc", "data.voc.root=/data/bccd", "solver.max_iter=7"])
    legacy = cfg.to_dict()
    legacy["data"]["root"] = legacy["data"]["voc"].pop("root")
    with caplog.at_level(logging.WARNING, logger="icdistill.config"):
        assert accuracy.same_config(legacy, cfg)
    assert not [r for r in caplog.records if "is now" in r.getMessage()]
    monkeypatch.setattr(config, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="icdistill.config"):
        config.config_from_dict(legacy)  # a user's config still gets the notice
    assert [r for r in caplog.records if "is now 'data.voc.root'" in r.getMessage()]


def test_variance_std_interval_is_the_chi_square_one(variance):
    low, high = variance.std_interval(1.0, 5)  # df 4: sqrt(4 / 11.143), sqrt(4 / 0.4844)
    assert low == pytest.approx(0.5991, abs=1e-4) and high == pytest.approx(2.8736, abs=1e-4)
    q_low, q_high = variance.chi2_quantiles(20)  # beyond the table: Wilson-Hilferty, exact 9.591 / 34.170
    assert q_low == pytest.approx(9.591, rel=0.01) and q_high == pytest.approx(34.170, rel=0.01)
    assert variance.std_interval(None, 5) is None and variance.std_interval(1.0, 1) is None


def _variance_students(aps_by_rule, repeats):
    students = {}
    for rule, aps in aps_by_rule.items():
        students[rule] = {"seeds": [{"bbox/AP": a} for a in aps]}
        students[rule + "-repeat"] = {"seeds": [{"bbox/AP": aps[0] + repeats.get(rule, 0.0)}]}
    return students


def test_variance_keeps_the_recipes_rule_unless_another_is_resolved_better(variance):
    step = [37.0, 37.8, 30.9, 36.4, 34.4]
    worse = [a - d for a, d in zip(step, [1.4, 1.0, 1.4, 0.9, 2.7])]  # every seed below step: resolved worse
    noisy = [a + d for a, d in zip(step, [2.0, -1.5, 0.5, -0.5, 0.2])]  # not resolved either way
    seeds = [0, 1, 2, 3, 4]
    table = variance.summarise(["step", "step_ema", "cosine"], seeds,
                               _variance_students({"step": step, "step_ema": worse, "cosine": noisy}, {}))
    assert table["step"]["minus_reference"] is None
    assert table["step_ema"]["minus_reference"]["resolved"] and table["step_ema"]["minus_reference"]["mean"] < 0
    assert not table["cosine"]["minus_reference"]["resolved"]
    assert table["step"]["seed_std_95"][0] < table["step"]["seed_std"] < table["step"]["seed_std_95"][1]
    assert variance.choose(table)["rule"] == "step"

    better = [a + d for a, d in zip(step, [1.0, 0.8, 1.2, 0.9, 1.1])]
    table = variance.summarise(["step", "cosine"], seeds, _variance_students({"step": step, "cosine": better}, {}))
    assert variance.choose(table)["rule"] == "cosine"
    # ... but not when its repeat differs: a rule that is not deterministic is out
    table = variance.summarise(["step", "cosine"], seeds,
                               _variance_students({"step": step, "cosine": better}, {"cosine": 0.3}))
    chosen = variance.choose(table)
    assert chosen["rule"] == "step" and "out: cosine, its repeat differs" in chosen["reason"]
    # a rule whose seed std is resolved higher than another's is out too, better mean or not
    wild = [60.0, 20.0, 70.0, 10.0, 80.0]
    steady = [35.0, 35.1, 34.9, 35.0, 35.05]
    table = variance.summarise(["step", "cosine"], seeds, _variance_students({"step": wild, "cosine": steady}, {}))
    assert variance.choose(table)["rule"] == "cosine"
    section = variance.section({"meta": {"suite": "bccd", "splits": {"train": "train", "evaluated on": "val"},
                                         "command": "python benchmarks/variance.py --suite bccd", "date": "2026-12-07",
                                         "hardware": {"machine": "x86_64", "processor": "AMD EPYC", "cpu_count": 2,
                                                      "gpu": None, "torch": "2"},
                                         "wall_s": 60.0, "runs_trained": 12, "runs_cached": 0, "seeds": seeds,
                                         "max_iter": 500, "settings": {"step": [], "cosine": []}},
                                "rules": table, "chosen": variance.choose(table)})
    assert "Chosen rule: **cosine**" in section and "| − step (paired) |" in section


def test_machine_type_tells_cpu_generations_apart(accuracy):
    """Two sittings both named "AMD EPYC" gave 35.7 and 36.4 AP from one recipe and seed: the
    type includes the family/model numbers and torch's instruction set; a record made before
    they were kept is a type of its own, and the teacher's machine does not enter the pairs."""
    here = accuracy.hardware()
    assert {"cpu_id", "cpu_isa"} <= set(here) and here["cpu_isa"]
    zen5 = {"processor": "AMD EPYC", "cpu_id": "family 26 model 2", "cpu_isa": "AVX512", "gpu": None}
    zen3 = {**zen5, "cpu_id": "family 25 model 1", "cpu_isa": "AVX2"}
    assert accuracy.machine_type(zen5) == "AMD EPYC (family 26 model 2, AVX512)"
    assert accuracy.machine_type(zen5) != accuracy.machine_type(zen3)
    assert accuracy.machine_type({"processor": "AMD EPYC", "gpu": None}) == "AMD EPYC (details not recorded)"
    assert accuracy.machine_type({**zen5, "gpu": "NVIDIA H100"}) == "NVIDIA H100"
    meta = {"hardware": zen5, "provenance": {"teacher": {"hardware": zen3}, "baseline/seed0": {"hardware": zen5}}}
    assert accuracy.machine_types(meta) == [accuracy.machine_type(zen5)]


def test_redo_elsewhere_retrains_the_students_recorded_on_another_machine_type(accuracy, tmp_path, capsys):
    out, records = tmp_path / "out", tmp_path / "records"
    args = ["--suite", "synthetic", "--quick", "--seeds", "0", "1", "--students", "baseline",
            "--out", str(out), "--records", str(records), "--no-results"]
    first = accuracy.main(args)
    assert capsys.readouterr().out.count(": trained ") == 3
    for run in ("teacher", "baseline/seed1"):  # pretend these two were trained in an older sitting
        record = records / run / "record.json"
        record.write_text(json.dumps({"recorded": "2026-12-01", "hardware": {"processor": "Old CPU", "gpu": None}}))
    again = accuracy.main(args)  # without the flag: every record is reused, the table says so
    assert capsys.readouterr().out.count(": cached ") == 3
    assert len(accuracy.machine_types(again["meta"])) == 2  # seed 1 from "Old CPU"; the teacher does not count
    redone = accuracy.main([*args, "--redo-elsewhere"])
    printed = capsys.readouterr().out
    assert "--redo-elsewhere: 1 student run(s)" in printed
    assert re.search(r"baseline +seed 1: trained", printed) and re.search(r"baseline +seed 0: cached", printed)
    assert re.search(r"teacher +seed -: cached", printed)  # the teacher is kept: students are stamped with it
    assert json.loads((records / "baseline" / "seed1" / "record.json").read_text())["hardware"]["processor"] != "Old CPU"
    assert accuracy.machine_types(redone["meta"]) == [accuracy.machine_type(accuracy.hardware())]
    ap = lambda res: [s["bbox/AP"] for s in res["students"]["baseline"]["seeds"]]  # noqa: E731
    assert ap(redone) == ap(first)  # the same machine: the same AP


def test_variance_calls_a_std_lower_only_past_the_f_quantile(variance):
    assert variance.f975(4) == 9.605 and variance.f975(9) == 4.026 and variance.f975(11) == 3.717  # conservative
    with pytest.raises(ValueError):
        variance.f975(0)

    def row(std, n):
        return {"seed_std": std, "bbox/AP": {str(k): 30.0 for k in range(n)}}

    # 1.71 against 0.73 (the BCCD step / cosine stds of 2026-12-07): variance ratio 5.49
    assert not variance.steadier(row(0.73, 5), row(1.71, 5))  # F(4, 4) 9.605: not resolved with 5 seeds
    assert variance.steadier(row(0.73, 10), row(1.71, 10))  # F(9, 9) 4.026: resolved with 10
    assert not variance.steadier(row(1.71, 10), row(0.73, 10))  # and only in that direction
    assert not variance.steadier(row(0.73, 10), row(1.71, 5))  # the fewer seeds set df
    assert not variance.steadier(row(None, 1), row(1.0, 5))
