"""What the report pages and a run's ``viz/training_curves.png`` plot, taken from loaded runs:
AP vs iteration, losses, a method's periodic diagnostics, PR curves. One run or several
(overlaid: one line per run). Every plot is drawn by the one renderer, :func:`.plots.panel_grid`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from icdistill.files import read_metrics_jsonl, write_bytes_atomic
from icdistill.reporting.plots import Panels, panel_grid
from icdistill.reporting.run_summary import TASK_PREFIXES, RunSummary

# Prefixes of the loss keys the trainer writes to metrics.jsonl.
LOSS_PREFIXES: tuple[str, ...] = ("loss/", "det/", "aux/", "distill/")
# Periodic evaluations plotted beside the losses: AP, and a method's own numbers (e.g. eval/icd/*).
EVAL_PLOTTED: tuple[str, ...] = ("eval/bbox/AP", "eval/segm/AP")
NO_CURVES = "no loss values logged"


def plotted_by_default(key: str) -> bool:
    """A loss, the periodic AP, or a method's own periodic number (``eval/<method>/...``)."""
    if key.startswith(LOSS_PREFIXES) or key in EVAL_PLOTTED:
        return True
    parts = key.split("/")
    return len(parts) >= 3 and parts[0] == "eval" and parts[1] not in ("bbox", "segm")


def save_training_curves(
    path: str | os.PathLike[str],
    metrics_jsonl_path: str | os.PathLike[str],
    keys: Sequence[str] | None = None,
) -> Path:
    """``viz/training_curves.png``: one panel per key against iteration, from metrics.jsonl.

    Args:
        metrics_jsonl_path: one JSON object per logged step with ``"iter"`` and numeric values.
        keys: which values to plot; default every numeric key :func:`plotted_by_default` picks
            (losses, the periodic AP, a method's periodic numbers) in first-seen order. Records
            without ``"iter"`` and non-finite values are left out.

    Raises:
        DataError: the metrics file does not exist.
        OutputError: the PNG cannot be written (full, read-only or forbidden folder).
    """
    run = RunSummary.of_records(read_metrics_jsonl(metrics_jsonl_path))
    keys = list(keys) if keys is not None else run.logged_keys(plotted_by_default)
    panels: Panels = {key: {key: run.series(key)} for key in keys} or {NO_CURVES: {}}
    return write_bytes_atomic(path, panel_grid(panels, xlabel="iteration", panel_inches=(4.0, 3.0)))

# PR panels beyond this many classes are left out (the page says so): 80 COCO panels are unreadable.
MAX_PR_CLASSES = 23
PR_KINDS = {"AP": "IoU 0.50:0.95", "AP50": "IoU 0.50"}
MEAN_PANEL = "mean over classes"
EVAL_TASK_PREFIXES = tuple(f"eval/{p}" for p in TASK_PREFIXES)  # the detector's periodic metrics


def _label(run: str, what: str, runs: Mapping[str, RunSummary]) -> str:
    """One run: the curve's kind; several: the run's name (each run draws one kind)."""
    return what if len(runs) == 1 else run


def ap_panels(runs: Mapping[str, RunSummary]) -> Panels:
    """``eval/<task>/AP`` (and, for one run, ``AP50``) of the periodic evaluations, ending at
    the final metrics.json value; one panel per task that has points, a line per run."""
    kinds = ("AP", "AP50") if len(runs) == 1 else ("AP",)
    panels: dict[str, dict] = {}
    for task in ("bbox", "segm"):
        lines = {}
        for name, run in runs.items():
            for kind in kinds:
                pts = run.series(f"eval/{task}/{kind}", with_final=True)
                if pts:
                    lines[_label(name, kind, runs)] = pts
        if lines:
            panels[f"{task} AP vs iteration"] = lines
    return panels


def loss_panels(runs: Mapping[str, RunSummary], *, max_panels: int = 12) -> Panels:
    """One panel per logged loss (``loss/``, ``det/``, ``aux/``, ``distill/``), a line per run."""
    keys: dict[str, None] = {}
    for run in runs.values():
        for k in run.logged_keys(lambda k: k.startswith(LOSS_PREFIXES)):
            keys.setdefault(k, None)
    return {k: {name: run.series(k) for name, run in runs.items() if run.series(k)}
            for k in list(keys)[:max_panels]}


def diagnostic_panels(runs: Mapping[str, RunSummary]) -> Panels:
    """A method's own periodic numbers (``eval/icd/idf_auroc`` ...), a line per run."""
    keys: dict[str, None] = {}
    for run in runs.values():
        for k in run.logged_keys(lambda k: k.startswith("eval/") and not k.startswith(EVAL_TASK_PREFIXES)):
            keys.setdefault(k, None)
    return {k.removeprefix("eval/"): {name: run.series(k) for name, run in runs.items() if run.series(k)}
            for k in keys}


def pr_panels(runs: Mapping[str, RunSummary], task: str = "bbox") -> tuple[Panels, int]:
    """Precision vs recall of the final evaluation: a panel for the mean over classes, then one
    per class (at most :data:`MAX_PR_CLASSES`); with one run both IoU 0.50 and 0.50:0.95
    curves, with several the IoU 0.50:0.95 curve of each run. Returns (panels, classes left out)."""
    kinds = ("AP50", "AP") if len(runs) == 1 else ("AP",)
    classes: dict[str, None] = {}
    for run in runs.values():
        for name in ((run.pr_curves or {}).get(task) or {}).get("classes", {}):
            classes.setdefault(name, None)
    panels: dict[str, dict] = {MEAN_PANEL: {}}
    for cls in list(classes)[:MAX_PR_CLASSES]:
        panels[cls] = {}
    for name, run in runs.items():
        data = (run.pr_curves or {}).get(task)
        if not data:
            continue
        recall, curves = data["recall"], data["classes"]
        for kind in kinds:
            label = _label(name, PR_KINDS[kind], runs)
            defined = [c[kind] for c in curves.values() if c]
            if defined:
                mean = [_mean(col) for col in zip(*defined)]
                panels[MEAN_PANEL][label] = list(zip(recall, mean))
            for cls in panels:
                if cls != MEAN_PANEL and curves.get(cls):
                    panels[cls][label] = list(zip(recall, curves[cls][kind]))
    panels = {k: v for k, v in panels.items() if v}
    return panels, max(0, len(classes) - MAX_PR_CLASSES)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
