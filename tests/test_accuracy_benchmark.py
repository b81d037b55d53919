"""benchmarks/accuracy.py: aggregation, the RESULTS.md section, and a --quick run that is reused."""

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

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
    assert set(data) == {"meta", "teacher", "students"}
    assert set(data["students"]) == {"baseline", "icd"}
    assert data["meta"]["seeds"] == [0, 1] and data["meta"]["layout"]["jobs"] == 1
    assert {"bbox/AP", "time/iter_s", "time/eval_s"} <= set(data["teacher"])
    for name, student in data["students"].items():
        assert set(student) == {"seeds", "mean", "std"} and len(student["seeds"]) == 2
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
