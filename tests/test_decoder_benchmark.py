"""benchmarks/decoder.py: decoder-only training of ICD's module on a frozen teacher, its
diagnostics per variant, and the command it records (every option as typed, so that a reader can
repeat the run)."""

import json
import shlex
import sys
from pathlib import Path

import pytest

from conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def decoder():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import decoder as module

    return module


def test_decoder_benchmark_trains_each_variant_and_records_the_whole_command(
        decoder, tiny_overrides, tiny_teacher, tmp_path):
    teacher_sets = [s.replace("model.", "teacher.") for s in TINY_MODEL]
    argv = ["--suite", "synthetic", "--teacher", str(tiny_teacher), "--variants", "paper_lr1e-3", "position_lr1e-3",
            "--iters", "4", "--eval-every", "2", "--batches", "2", "--diagnostic-images", "4",
            "--json", str(tmp_path / "decoder.json"), "--no-results",
            *[arg for s in (*tiny_overrides, *teacher_sets) for arg in ("--set", s)]]
    decoder.main(argv)
    result = json.loads((tmp_path / "decoder.json").read_text())
    assert result["command"] == "python benchmarks/decoder.py " + shlex.join(argv)
    assert list(result["variants"]) == ["paper_lr1e-3", "position_lr1e-3"]
    for curve in result["variants"].values():
        assert [point["iter"] for point in curve] == [2, 4]
        for point in curve:
            assert 0.0 <= point["icd/idf_auroc"] <= 1.0 and 0.0 <= point["icd/attn_in_box"] <= 1.0
    # only the position prior has a fixed kernel to compare the learned decoder with
    assert "icd/attn_in_box_kernel" in result["variants"]["position_lr1e-3"][-1]
    assert "icd/attn_in_box_kernel" not in result["variants"]["paper_lr1e-3"][-1]
    table = decoder.results_table(result)
    assert "| paper_lr1e-3 | " in table and "no kernel" in table and "| position_lr1e-3 | " in table
