"""Run reports: report.html written by a real run, `icdistill report` / `compare`, both pages
loaded in headless Chromium (no console error, every image decoded, the metrics table there),
the PR data of the evaluator, and the teacher–student gap of the compare table."""

import json
import shutil
from pathlib import Path

import pytest

from icdistill.cli import main
from icdistill.engine.trainer import train
from icdistill.reporting import load_run, render_run
from icdistill.reporting.compare import compare_rows, gap_closed, markdown_table
from icdistill.reporting.run_summary import RunSummary

# Score threshold 0: a 4-iteration detector scores below torchvision's 0.05, and PR curves need
# detections; eval.period 3: AP-vs-iteration has a point before the final one.
REPORT_SETS = ["model.score_thresh=0.0", "model.detections_per_image=10", "eval.period=3", "eval.report=true"]
TEACHER_SETS = ["teacher.family=retinanet", "teacher.backbone=resnet18", "teacher.fpn_channels=32",
                "teacher.anchor_sizes=[16, 32, 64, 128, 256]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_config):
    """A teacher, a baseline and an ICD student distilled from that teacher (tiny, real)."""
    root = tmp_path_factory.mktemp("report_runs")
    train(tiny_config(*REPORT_SETS), root / "teacher", progress=False)
    train(tiny_config(*REPORT_SETS, "solver.seed=1"), root / "baseline", progress=False)
    icd = tiny_config(*REPORT_SETS, *TEACHER_SETS, "distill.method=icd", "distill.warmup_iters=1",
                      "distill.icd.decoder_warmup_iters=2", f"teacher.weights={root / 'teacher' / 'detector.pt'}")
    train(icd, root / "icd", progress=False)
    return root


def test_every_run_writes_its_report_with_the_final_pr_curves(runs):
    for name in ("teacher", "baseline", "icd"):
        page = (runs / name / "report.html").read_text()
        assert 'class="metrics"' in page and "http://" not in page and "https://" not in page
        assert "<script" not in page  # no script at all: nothing to fail offline
    run = load_run(runs / "icd")
    assert {"bbox/AP", "icd/idf_auroc"} <= set(run.metrics)
    curves = json.loads((runs / "icd" / "pr_curves.json").read_text())["bbox"]
    assert len(curves["recall"]) == 101
    defined = {name: c for name, c in curves["classes"].items() if c is not None}
    assert defined, "score_thresh 0 gives detections, hence PR curves"
    for name, c in defined.items():
        # COCO AP of a class is the mean of its IoU-averaged precision curve.
        assert 100 * sum(c["AP"]) / len(c["AP"]) == pytest.approx(run.metrics[f"bbox/AP-{name}"], abs=0.01)
        assert all(p is None or 0.0 <= p <= 1.0 for p in c["AP50"])


def test_cli_report_and_compare_pages_load_in_chromium(runs, tmp_path, capsys):
    driver = _chromium()
    (runs / "icd" / "report.html").unlink()
    assert main(["report", str(runs / "icd")]) == 0
    out = tmp_path / "cmp"
    args = ["compare", *(str(runs / n) for n in ("teacher", "baseline", "icd")), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| run | role | method | AP |") and "gap closed %" in table[0]
    roles = {cells[0]: cells[1] for cells in (r.strip("| ").split(" | ") for r in table[1:]) if cells[0] != "---"}
    assert roles == {"teacher": "teacher", "baseline": "baseline", "icd": "student"}
    shots = tmp_path / "screenshots"
    try:
        for page in (runs / "icd" / "report.html", out / "compare.html"):
            images = _load_and_check(driver, page, shots)
            assert images >= (6 if page.name == "report.html" else 5), page
    finally:
        driver.quit()
    print(f"screenshots in {shots}")


def test_a_run_without_final_metrics_gets_a_page_from_its_log(runs, tmp_path):
    """A run still training (or stopped) has metrics.jsonl but no metrics.json yet."""
    run = tmp_path / "unfinished"
    shutil.copytree(runs / "icd", run, ignore=shutil.ignore_patterns("metrics.json", "pr_curves.json", "report.html"))
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "no final metrics yet" in page and 'alt="loss curves"' not in page  # the run's own picture instead
    assert "viz/training_curves.png" in page and "no PR curves" in page


def _chromium():
    """A headless Chromium WebDriver; skips where chromium or chromedriver is not installed."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (binary and driver_path):
        pytest.skip("chromium / chromedriver not installed (make install adds them where apt-get can)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _load_and_check(driver, page: Path, shots: Path) -> int:
    """Open ``page`` from disk; no SEVERE console entry, every <img> decoded, a metrics table
    with rows; a full-page screenshot into ``shots``. Returns the number of images."""
    driver.get(page.resolve().as_uri())
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert not broken, f"{page}: images not shown: {broken}"
    rows = driver.execute_script("return document.querySelectorAll('table.metrics tbody tr').length;")
    assert rows >= 1, f"{page}: no metrics table"
    height = driver.execute_script("return document.body.scrollHeight;")
    driver.set_window_size(1400, min(height + 40, 16000))
    shots.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(shots / f"{page.parent.name}_{page.stem}.png"))
    driver.set_window_size(1400, 1000)
    return len(images)


def _summary(name: str, metrics: dict, method: str = "none", seed: int = 0, **config) -> RunSummary:
    cfg = {"distill": {"method": method}, "solver": {"seed": seed}, **config}
    return RunSummary(Path("/runs") / name, name, metrics, [], cfg, "", None, None)


def test_gap_closed_uses_the_teacher_run_and_the_baseline_of_the_same_seed():
    teacher_pt = "/runs/teacher/detector.pt"
    runs = {
        "teacher": _summary("teacher", {"bbox/AP": 40.0}),
        "baseline/seed0": _summary("baseline/seed0", {"bbox/AP": 20.0}, seed=0),
        "baseline/seed1": _summary("baseline/seed1", {"bbox/AP": 24.0}, seed=1),
        "icd/seed1": _summary("icd/seed1", {"bbox/AP": 32.0}, "icd", 1, teacher={"weights": teacher_pt}),
    }
    rows = {r.name: r for r in compare_rows(runs)}
    assert rows["teacher"].role == "teacher" and rows["baseline/seed0"].role == "baseline"
    assert rows["icd/seed1"].baseline == "baseline/seed1"
    assert rows["icd/seed1"].gap_closed == pytest.approx((32 - 24) / (40 - 24))
    forced = {r.name: r for r in compare_rows(runs, baseline="baseline/seed0")}
    assert forced["icd/seed1"].gap_closed == pytest.approx((32 - 20) / (40 - 20))
    assert "| icd/seed1 | student | icd | 32.0 |" in markdown_table(list(rows.values()))
    assert gap_closed(30.0, 20.0, 20.0) is None  # no gap to close


def test_without_a_teacher_run_the_students_teacher_check_gives_the_gap_and_is_shown():
    runs = {
        "base": _summary("base", {"bbox/AP": 10.0}),
        "icd": _summary("icd", {"bbox/AP": 16.0, "teacher/bbox/AP": 30.0, "teacher/images": 50}, "icd",
                        teacher={"weights": "/elsewhere/detector.pt"}),
    }
    row = compare_rows(runs)[1]
    assert (row.teacher_source, row.gap_closed) == ("teacher check", pytest.approx(0.3))
    page = render_run(runs["icd"])
    assert 'id="teacher"' in page and "teacher/bbox/AP" in page and "30.00" in page


def test_text_from_files_is_escaped():
    run = RunSummary(Path("/runs/x"), "<b>x</b>", {"bbox/AP": 1.0, "bbox/AP-<img src=x>": 2.0}, [],
                     {"distill": {"method": "none"}}, "note: <script>alert(1)</script>\n", None, None)
    page = render_run(run)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x>" not in page and "<b>x</b>" not in page


def test_voc_evaluator_keeps_the_precision_envelope_at_101_recall_points():
    """One image, two boxes (and a difficult one, ignored); at IoU 0.5 the detections are TP,
    FP, TP: precision 1 up to recall 0.5, then 2/3 (the envelope of 1, 1/2, 2/3)."""
    import contextlib
    import io

    import torch
    from pycocotools.coco import COCO

    from icdistill.evaluation import VOCEvaluator

    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 80}],
                  "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "none"}],
                  "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 400.0,
                                   "bbox": b, "difficult": d}
                                  for i, (b, d) in enumerate([([0, 0, 20, 20], 0), ([50, 0, 20, 20], 0),
                                                              ([0, 50, 20, 20], 1)])]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    ev = VOCEvaluator(gt, [1, 2], use_07_metric=False)
    boxes = torch.tensor([[0, 0, 20, 20], [80, 60, 90, 70], [0, 50, 20, 70], [52, 0, 72, 20.0]])
    ev.process([1], [(80, 100)], [(80, 100)], [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
                                                "labels": torch.zeros(4, dtype=torch.int64)}])
    metrics = ev.evaluate()
    data = ev.pr_curves["bbox"]
    assert data["classes"]["none"] is None  # no ground truth
    ap50 = data["classes"]["cell"]["AP50"]
    assert len(data["recall"]) == len(ap50) == 101
    assert ap50[:51] == [1.0] * 51 and ap50[51:] == [pytest.approx(2 / 3, abs=1e-4)] * 50
    assert metrics["bbox/AP50-cell"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3))
