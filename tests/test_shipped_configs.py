"""Every recipe shipped in the package loads and validates."""

from pathlib import Path

import pytest

from icdistill.config import load_config
from icdistill.demo import demo_config_path
from icdistill.detectors.families import family_facts

CONFIG_ROOT = demo_config_path("student").parents[1]
RECIPES = sorted(p for p in CONFIG_ROOT.rglob("*.yaml"))


def test_recipes_exist():
    names = {p.relative_to(CONFIG_ROOT).as_posix() for p in RECIPES}
    assert {"demo/teacher.yaml", "demo/student.yaml", "demo/icd.yaml", "voc/bccd_icd.yaml"} <= names
    assert {f"coco/{f}_R50_1x_icd_inherit.yaml" for f in ("faster_rcnn", "retinanet", "fcos")} <= names
    for variant in ("c4", "dc5"):  # Table 10 and the BCCD suite
        assert {f"coco/faster_rcnn_{variant}_R101_3x_teacher.yaml", f"coco/faster_rcnn_{variant}_R50_1x.yaml",
                f"coco/faster_rcnn_{variant}_R50_1x_icd.yaml", f"coco/faster_rcnn_{variant}_R50_1x_icd_inherit.yaml",
                f"voc/bccd_{variant}_teacher.yaml", f"voc/bccd_{variant}_student.yaml", f"voc/bccd_{variant}_icd.yaml"} <= names
    assert {"coco/retinanet_R50_1x_icd_from_fcos.yaml", "coco/faster_rcnn_R50_1x_icd_from_mask_rcnn.yaml",
            "coco/faster_rcnn_R50_1x_icd_from_cascade_mask_rcnn.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(CONFIG_ROOT).as_posix())
def test_recipe_loads(path: Path):
    cfg = load_config(path)
    if cfg.distill.method == "icd":
        assert cfg.teacher.weights, "a distillation recipe names its teacher"
        # Any family pair whose pyramids align (Table 9's FCOS -> RetinaNet, Mask -> Faster R-CNN).
        assert family_facts(cfg.teacher.family).levels == family_facts(cfg.model.family).levels


def test_paper_recipes_follow_the_spec():
    voc = load_config(CONFIG_ROOT / "voc" / "faster_rcnn_R50_icd.yaml")
    assert voc.solver.max_iter == 18000 and voc.distill.icd.decoder_warmup_iters == 6000
    assert voc.data.train_years == ("2007", "2012") and voc.data.test_years == ("2007",)
    coco = load_config(CONFIG_ROOT / "coco" / "retinanet_R50_3x_icd_inherit.yaml")
    assert coco.solver.max_iter == 270000 and coco.distill.inherit and coco.teacher.backbone == "resnet101"


def test_icd_recipes_leave_the_distillation_warm_up_to_the_method():
    """ICD recipes get ICD's 1000-iteration warm-up (ICD_SPEC §7) from the method default, so
    ``--set distill.method=M`` on one of them runs M with M's own warm-up, not ICD's."""
    from icdistill.distill.build import warmup_iters

    # The full-schedule ICD recipes; the demo's and BCCD's short schedules set their own warm-up.
    icd_recipes = [p for p in RECIPES if p.parent.name in ("coco", "voc", "cityscapes")
                   and p.stem.endswith("_icd") and not p.stem.startswith("bccd")]
    assert len(icd_recipes) == 12
    for path in icd_recipes:
        assert warmup_iters(load_config(path).distill) == 1000, path
    recipe = CONFIG_ROOT / "coco" / "faster_rcnn_R50_1x_icd.yaml"
    assert warmup_iters(load_config(recipe, ["distill.method=mimic"]).distill) == 0
    assert warmup_iters(load_config(recipe, ["distill.method=fgfi"]).distill) == 25
