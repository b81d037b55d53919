"""Real data: BCCD (Pascal VOC layout, ../shared/data/bccd) through the CLI."""

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from icdistill.cli import main
from icdistill.demo import demo_config_path

BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd"
pytestmark = pytest.mark.skipif(not BCCD.is_dir(), reason="BCCD is not beside the checkout (../shared/data/bccd)")
RECIPE = demo_config_path("student").parents[1] / "voc" / "bccd_student.yaml"
TINY = [
    f"data.voc.root={BCCD}",
    "data.min_sizes=[96]",
    "data.max_size=128",
    "data.test_size=96",
    "model.family=retinanet",
    "model.backbone=resnet18",
    "model.fpn_channels=32",
    "model.anchor_sizes=[16, 32, 64, 128, 256]",
    "solver.max_iter=2",
    "solver.ims_per_batch=2",
    "solver.warmup_iters=1",
    "eval.batch_size=8",
    "eval.viz_images=1",
]


def sets(*values):
    return [f"--set={v}" for v in values]


def xml_counts(split: str) -> tuple[int, Counter, int]:
    """(images, usable boxes per class, degenerate boxes) counted straight from the XML files."""
    ids = (BCCD / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    counts, degenerate = Counter(), 0
    for image_id in ids:
        for obj in ET.parse(BCCD / "Annotations" / f"{image_id}.xml").findall("object"):
            box = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            if box[2] <= box[0] or box[3] <= box[1]:
                degenerate += 1
            elif obj.findtext("difficult", "0").strip() != "1":
                counts[obj.findtext("name").strip()] += 1
    return len(ids), counts, degenerate


def test_stats_match_the_xml_counts(tmp_path):
    out = tmp_path / "prior.json"
    assert main(["--no-progress", "stats", str(RECIPE), "--out", str(out), *sets(f"data.voc.root={BCCD}")]) == 0
    prior = json.loads(out.read_text())
    num_images, counts, _ = xml_counts("trainval")
    assert prior["num_images"] == num_images
    for cls in prior["classes"]:
        assert round(cls["freq"] * num_images) == counts[cls["name"]], cls["name"]
    assert sorted(c["name"] for c in prior["classes"]) == sorted(counts)


def test_train_and_eval_on_bccd_with_voc_and_coco_evaluators(tmp_path):
    run = tmp_path / "run"
    assert main(["--no-progress", "train", str(RECIPE), "--out", str(run), *sets(*TINY, "eval.evaluator=voc")]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"bbox/AP", "bbox/AP50", "bbox/AP75"} <= set(metrics)
    assert "bbox/AP50-WBC" in metrics  # the VOC evaluator's per-class keys
    assert (run / "per_class.md").read_text().count("|") > 10
    report = json.loads((run / "data_report.json").read_text())
    assert report["train"]["num_images"] == 292 and report["test"]["num_images"] == 72
    _, _, degenerate = xml_counts("trainval")
    assert degenerate == 2  # BCCD's README: two broken boxes
    assert report["train"]["counts"]["degenerate_boxes"] == degenerate
    assert report["train"]["files"]["degenerate_boxes"] == ["BloodImage_00338.jpg", "BloodImage_00343.jpg"]

    coco_eval = tmp_path / "coco_eval"
    assert main(["--no-progress", "eval", str(RECIPE), "--weights", str(run / "detector.pt"), "--out", str(coco_eval),
                 *sets(*TINY, "eval.evaluator=coco")]) == 0
    coco_metrics = json.loads((coco_eval / "metrics.json").read_text())
    assert {"bbox/AP", "bbox/APs", "bbox/APm", "bbox/APl"} <= set(coco_metrics)
