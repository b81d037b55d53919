"""ICD's defaults are the paper's design until the validation comparison on the student resolves
another above it. Every shipped recipe runs it, and the accuracy benchmark has the rows of that
comparison, each stating its decoder and warm-up LR."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_accuracy_benchmark import accuracy  # noqa: F401  (the benchmark module, a fixture)

from icdistill.config import load_config
from icdistill.demo import demo_config_path
from icdistill.distill.icd.build import ICDConfig

CONFIG_ROOT = demo_config_path("student").parents[1]
PAPER_RECIPES = sorted(
    [*CONFIG_ROOT.glob("coco/*.yaml"), *CONFIG_ROOT.glob("voc/*R50*.yaml"), CONFIG_ROOT / "voc" / "voc0712_base.yaml",
     *CONFIG_ROOT.glob("cityscapes/*.yaml")]
)
OUR_RECIPES = sorted(p for p in [*CONFIG_ROOT.glob("demo/*.yaml"), *CONFIG_ROOT.glob("voc/bccd_*.yaml")]
                     if load_config(p).distill.method == "icd")


def test_the_defaults_are_the_papers_decoder_at_the_modules_lr():
    cfg = ICDConfig()
    assert cfg.position_prior is False and cfg.decoder_warmup_lr is None


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: p.relative_to(CONFIG_ROOT).as_posix())
def test_paper_recipes_run_the_papers_design(path: Path):
    icd = load_config(path).distill.icd
    assert icd.position_prior is False and icd.decoder_warmup_lr is None
    raw = path.read_text()
    assert "position_prior" not in raw and "decoder_warmup_lr" not in raw


def test_demo_and_bccd_icd_recipes_run_the_chosen_default():
    assert len(OUR_RECIPES) >= 6
    for path in OUR_RECIPES:
        icd = load_config(path).distill.icd
        assert icd.position_prior is False and icd.decoder_warmup_lr is None, path
        assert icd.decoder_warmup_iters == 200, path  # the paper's warm-up stage, scaled to 500 iterations


def test_the_accuracy_benchmark_has_the_rows_that_choose_the_defaults(accuracy, tmp_path):
    (tmp_path / "bccd" / "ImageSets" / "Main").mkdir(parents=True)  # planning reads no images
    args = accuracy.parse_args(["--suite", "bccd", "--bccd-root", str(tmp_path / "bccd"), "--split", "validation",
                                "--students", *accuracy.ICD_DEFAULT_ROWS])
    plan = accuracy.make_plan(args, tmp_path / "out")
    got = {row: plan.student(row, 0).cfg.distill.icd for row in accuracy.ICD_DEFAULT_ROWS}
    assert {row: (c.position_prior, c.decoder_warmup_iters, c.decoder_warmup_lr) for row, c in got.items()} == {
        "icd_prior": (True, 200, 0.001), "icd_prior_lr1x": (True, 200, None), "icd_prior_nowarmup": (True, 0, 0.001),
        "icd_paper": (False, 200, 0.001), "icd_paper_lr1x": (False, 200, None), "icd_paper_nowarmup": (False, 0, 0.001),
        "icd_paper_warm6k": (False, 6000, None), "icd_paper_warm3k": (False, 3000, 0.001),
    }
    assert all(plan.student(row, 0).cfg.data.voc.test_splits == ("val",) for row in accuracy.ICD_DEFAULT_ROWS)
    # the recipe's ICD is the paper's design, the row the comparison measured it with
    assert plan.student("icd", 0).cfg.distill == plan.student("icd_paper_lr1x", 0).cfg.distill
