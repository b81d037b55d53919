"""``icdistill demo``: teacher, baseline student and ICD student on the shapes dataset.

The three recipes are ``configs/demo/{teacher,student,icd}.yaml`` (shipped inside the package);
the demo only points them at its output directory. ``--quick`` runs the same path with tiny
data and schedules as a smoke test.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from icdistill.config import Config, load_config
from icdistill.engine.report import RunResult
from icdistill.engine.trainer import train
from icdistill.files import DETECTOR_FILE
from icdistill.evaluation import format_metrics_table
from icdistill.reporting import write_compare

TABLE_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl", "time/train_s")

# --quick: the same path with a few iterations on a few images (a smoke run, not a result).
QUICK_OVERRIDES = (
    "data.shapes.num_train=48",
    "data.shapes.num_test=16",
    "solver.checkpoint_period=1000",
    "eval.viz_images=2",
)
QUICK_ITERS = {"teacher": 16, "student": 8, "icd": 8}
# A 16-iteration teacher scores ~0 AP, which the teacher check rightly stops; the smoke run
# turns the check off and says so (the full demo's teacher passes it).
QUICK_TEACHER_NOTE = ("note: --quick trains its teacher for a few iterations only, too few to pass the teacher "
                      "check (distill.check_teacher); the smoke run skips the check, the full demo keeps it")


def demo_config_path(name: str) -> Path:
    """Path of a shipped demo recipe (``teacher``, ``student`` or ``icd``)."""
    return Path(str(resources.files("icdistill") / "configs" / "demo" / f"{name}.yaml"))


def demo_configs(out: Path, *, quick: bool = False) -> dict[str, Config]:
    """The three recipes, pointed at ``out`` (data in ``out/data``, teacher in ``out/teacher``)."""
    configs = {}
    for name in ("teacher", "student", "icd"):
        overrides = [f"data.shapes.root={out / 'data'}"]
        if name == "icd":
            overrides.append(f"teacher.weights={out / 'teacher' / DETECTOR_FILE}")
        if quick:
            overrides += [*QUICK_OVERRIDES, f"solver.max_iter={QUICK_ITERS[name]}", "solver.log_period=4"]
            if name == "icd":
                overrides += ["distill.icd.decoder_warmup_iters=4", "distill.warmup_iters=2", "distill.check_teacher=false"]
        configs[name] = load_config(demo_config_path(name), overrides)
    return configs


def _title(name: str, cfg: Config) -> str:
    """A table row name such as ``student + ICD (fcos mobilenet_v2, 250 it)``."""
    label = {"teacher": "teacher", "student": "student", "icd": "student + ICD"}[name]
    return f"{label} ({cfg.model.family} {cfg.model.backbone}, {cfg.solver.max_iter} it)"


def run_demo(out: Path, *, quick: bool = False, progress: bool = True) -> dict[str, RunResult]:
    """Train the three detectors, write ``results.md`` and print the comparison table."""
    out.mkdir(parents=True, exist_ok=True)
    configs = demo_configs(out, quick=quick)
    results: dict[str, RunResult] = {}
    titles = {name: _title(name, cfg) for name, cfg in configs.items()}
    for name, cfg in configs.items():
        print(f"\n== {titles[name]}: {out / name}")
        if quick and not cfg.distill.check_teacher and cfg.distill.method != "none":
            print(QUICK_TEACHER_NOTE)
        results[name] = train(cfg, out / name, progress=progress)

    rows = {titles[name]: r.metrics for name, r in results.items()}
    table = format_metrics_table(rows, keys=TABLE_KEYS)
    note = "smoke run (--quick): numbers are not meaningful" if quick else "shapes dataset, held-out split"
    text = f"# icdistill demo\n\n{note}; COCO box AP in percent, training time in seconds.\n\n{table}\n"
    (out / "results.md").write_text(text)
    summary = {name: {k: r.metrics.get(k) for k in TABLE_KEYS} for name, r in results.items()}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print("\n" + text)
    print(f"attention overlays: {out / 'icd' / 'viz'}")
    page, _ = write_compare([out / name for name in configs], out)
    print(f"the three runs side by side: {page}  (each run's own page: {out / 'icd' / 'report.html'})")
    return results


__all__ = ["run_demo", "demo_configs", "demo_config_path"]
