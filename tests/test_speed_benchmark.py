"""benchmarks/speed.py's per-method rows (#11): every method of the slot is timed on a one-stage
and a two-stage pair with its peak memory, and a method a family does not support is reported
as such (tiny images and 1 iteration here: the numbers mean nothing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from icdistill.distill.core.registry import method_names

ROOT = Path(__file__).resolve().parents[1]


def load_speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_method_gets_a_time_and_peak_memory_row_per_pair(tmp_path):
    speed = load_speed()
    tiny = ["data.shapes.num_train=8", "data.shapes.num_test=2", "data.shapes.image_height=64",
            "data.shapes.image_width=96", "data.min_sizes=[64]", "data.max_size=128", "solver.ims_per_batch=2",
            "model.fpn_channels=32", "teacher.fpn_channels=32", "teacher.backbone=resnet18", "distill.icd.hidden_dim=32"]
    methods = ("icd", "mimic", "defeat")  # the slot's three kinds: own module, RoI pooling, RoI heads
    result = speed.time_methods(tmp_path / "shapes", 1, torch.device("cpu"), tiny, methods)
    assert list(result) == list(speed.METHOD_PAIRS)
    for pair, rows in result.items():
        assert list(rows) == ["none + teacher", *methods]
        timed = {m: r for m, r in rows.items() if "not_supported" not in r}
        assert set(timed) == set(rows), pair  # every method runs on FCOS and Faster R-CNN
        for method, r in timed.items():
            assert r["s_per_iter"] > 0 and r["peak_mem_mb"] > 0, (pair, method)
            assert method == "none + teacher" or r["ratio"] == r["s_per_iter"] / rows["none + teacher"]["s_per_iter"]
    table = speed.methods_table({"methods": result})
    assert table.count("\n| ") == 2 + len(methods)  # header + reference + one line per method
    assert set(speed.METHOD_ROWS) == set(method_names())  # every registered method is a row of the benchmark
    # a family a method does not support: its error instead of a number
    result["fcos"]["mimic"] = {"not_supported": "distill.method mimic supports faster_rcnn only"}
    assert "n/a: mimic on fcos: distill.method mimic supports faster_rcnn only." in speed.methods_table({"methods": result})
