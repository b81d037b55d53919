"""benchmarks/gpu_check.py (#25) on the CPU at tiny size: its plan, synthetic data, budget and
output, and every method of the slot through one bf16 training step (the numbers mean nothing
here; the GPU run is documented in docs/RESULTS.md)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_plan_measures_the_core_cells_first_then_the_training_run_then_every_method(gpu_check):
    settings = gpu_check.Settings()
    items = gpu_check.plan(settings)
    cells = [c for c in items if c != gpu_check.TRAINING_RUN]
    assert len(set(cells)) == len(cells)
    core = ("student", "student+teacher", "icd")
    first = items[: items.index(gpu_check.TRAINING_RUN)]
    assert {(c.batch, c.step) for c in first} == {(2, s) for s in core}
    assert {c.precision for c in first} == set(gpu_check.MODES) and len(first) == 4 * 2 * 3
    methods = gpu_check.slot_methods()
    assert set(settings.slot()) == set(methods) and "icd" in methods and "fitnet" in methods
    for family in settings.families:
        for batch in settings.batches:
            for precision in ("fp32", "bf16", "fp16"):
                steps = {c.step for c in cells if (c.family, c.batch, c.precision) == (family, batch, precision)}
                assert steps == {*core[:2], *methods}, (family, batch, precision)
    others = [c.step for c in cells if c.step not in core]
    assert others[0] == "fitnet"  # the first comparison method measured is FitNet


def test_synthetic_targets_have_cocos_instance_counts_and_box_size_mix(gpu_check):
    h, w = 800, 1333
    targets = gpu_check.coco_like_targets(3000, (h, w), 80, seed=0)
    counts = torch.tensor([len(t["boxes"]) for t in targets], dtype=torch.float32)
    assert 6.5 < counts.mean() < 7.5 and counts.min() >= 1 and counts.max() <= gpu_check.MAX_INSTANCES
    assert counts.max() >= 30  # a long tail
    boxes = torch.cat([t["boxes"] for t in targets])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    fractions = [float((area < 32**2).float().mean()), float(((area >= 32**2) & (area < 96**2)).float().mean())]
    assert abs(fractions[0] - 0.41) < 0.05 and abs(fractions[1] - 0.34) < 0.05
    labels = torch.cat([t["labels"] for t in targets])
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 80
    batch = gpu_check.coco_like_batch(2, (64, 96), 3)
    assert batch.images.shape[0] == 2 and all(len(t["boxes"]) >= 1 for t in batch.targets)


def test_estimates_come_from_the_dearest_similar_cell_per_image(gpu_check):
    Cell = gpu_check.Cell
    done = [(Cell("retinanet", 2, "bf16", "student"), {"status": "measured", "cell_s": 4.0}),
            (Cell("retinanet", 2, "bf16", "icd"), {"status": "measured", "cell_s": 6.0}),
            (Cell("retinanet", 2, "fp32", "icd"), {"status": "measured", "cell_s": 10.0}),
            (Cell("faster_rcnn", 2, "fp32", "icd"), {"status": "error", "reason": "x"})]
    assert gpu_check.estimate_s(Cell("retinanet", 8, "bf16", "fitnet"), done) == 6.0 / 2 * 8
    assert gpu_check.estimate_s(Cell("retinanet", 2, "fp16", "icd"), done) == 10.0  # same family, any precision
    assert gpu_check.estimate_s(Cell("faster_rcnn", 2, "bf16", "icd"), done) == 10.0  # any measured cell
    assert gpu_check.estimate_s(Cell("faster_rcnn", 2, "bf16", "icd"), []) is None
    far = time.monotonic() + 100
    assert gpu_check.budget_skip(50.0, far) is None and gpu_check.budget_skip(None, far) is None
    assert "time budget: ~500 s needed" in gpu_check.budget_skip(500.0, far)["reason"]
    assert gpu_check.budget_skip(None, time.monotonic() - 1)["status"] == "skipped"


def test_a_spent_budget_records_every_cell_and_the_training_run_as_skipped(gpu_check):
    settings = dataclasses.replace(gpu_check.TINY, budget_s=0.0, reserve_s=0.0)
    start = time.monotonic()
    result = gpu_check.run_check(settings, CPU)
    assert time.monotonic() - start < 5  # nothing was built or run
    assert len(result["cells"]) == len(gpu_check.plan(settings)) - 1
    assert all(c["status"] == "skipped" for c in result["cells"])
    reasons = {c["precision"]: c["reason"] for c in result["cells"]}
    assert reasons["fp16"] == gpu_check.CPU_SKIPS["fp16"]  # fp16 + GradScaler: a GPU path
    assert reasons["bf16_channels_last"] == gpu_check.CPU_SKIPS["bf16_channels_last"]
    assert reasons["bf16"].startswith("time budget")
    assert result["training_run"]["status"] == "skipped" and result["icd_overhead_ratio"] == {}
    assert len(result["not_measured"]) == len(result["cells"])
    assert "## Not measured" in gpu_check.markdown(result)


def finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_a_tiny_cpu_run_writes_finite_positive_numbers_and_a_finite_training_run(gpu_check, tmp_path):
    # A generous budget: bf16 on a CPU without bf16 instructions is slow, and test machines are shared.
    result = gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--families", "retinanet",
                             "--batches", "2", "--methods", "icd", "fitnet", "--train-steps", "8", "--budget-s", "1800"])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(result))
    assert result["settings"]["methods"] == ["icd", "fitnet"] and result["elapsed_s"] < result["settings"]["budget_s"]
    by_key = {(c["precision"], c["step"]): c for c in result["cells"]}
    for precision in ("fp32", "bf16"):
        for step in ("student", "student+teacher", "icd", "fitnet"):
            cell = by_key[(precision, step)]
            assert cell["status"] == "measured", cell
            assert finite_positive(cell["s_per_iter"]) and finite_positive(cell["peak_mem_mb"]), cell
    for step in ("student", "student+teacher", "icd"):
        assert by_key[("fp16", step)]["status"] == "skipped"
    ratios = result["icd_overhead_ratio"]
    assert set(ratios) == {"retinanet/2/fp32", "retinanet/2/bf16"} and all(map(finite_positive, ratios.values()))
    run = result["training_run"]
    assert run["status"] == "measured" and run["steps_run"] == 8 and run["all_finite"]
    assert {"total", "det/classification", "det/bbox_regression", "distill/icd/feature"} <= set(run["losses"])
    assert run["total_fell"] and all(isinstance(v["fell"], bool) for v in run["losses"].values())
    page = (tmp_path / "gpu_check.md").read_text()
    assert "## retinanet, 2 images per step" in page and "| icd |" in page and "retinanet/2/bf16" in page


def test_every_method_of_the_slot_trains_one_bf16_step_with_float32_finite_losses(gpu_check):
    """bf16 autocast on the CPU through the trainer's step, both families: what a GPU run in
    bf16 executes, minus the device."""
    settings = dataclasses.replace(gpu_check.TINY, size=(48, 64))
    batch = gpu_check.coco_like_batch(2, settings.size, settings.num_classes, seed=3)
    for family in ("retinanet", "faster_rcnn"):
        models = gpu_check.family_models(family, settings)
        for method in gpu_check.slot_methods():
            step = gpu_check.cell_step(gpu_check.Cell(family, 2, "bf16", method), models, batch, CPU)
            total, losses = step()
            assert torch.isfinite(total), (family, method)
            distill = {k: v for k, v in losses.items() if k.startswith(f"distill/{method}/")}
            assert distill, (family, method, list(losses))
            bad = {k: v.dtype for k, v in losses.items() if v.dtype != torch.float32}
            assert not bad, (family, method, bad)
