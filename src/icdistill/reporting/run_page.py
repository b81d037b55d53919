"""``report.html`` of one run directory: written at the end of every run and by
``icdistill report RUN_DIR``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from icdistill.files import write_text_atomic
from icdistill.reporting import html as h
from icdistill.reporting import sections as s
from icdistill.reporting.run_summary import PR_CURVES_FILE, RunSummary, load_run

REPORT_FILE = "report.html"


def render_run(run: RunSummary) -> str:
    """The whole page of one run (see :mod:`icdistill.reporting.sections`)."""
    runs = {run.name: run}
    parts = [s.metrics_section(run), s.per_class_section(run), s.weaker_teacher_section(run), s.teacher_section(run),
             *s.curve_sections(runs), s.method_section(run), s.detections_section(runs),
             s.data_section(runs), s.config_section(run)]
    iters = run.last_iter
    subtitle = " · ".join(x for x in (
        str(run.path.resolve()), run.model_text, f"distill.method {run.method}",
        f"{iters} iterations" if iters is not None else "") if x)
    return h.page(f"icdistill run: {run.name}", subtitle, [p for p in parts if p is not None])


def write_run_report(run_dir: str | Path, *, pr_curves: dict[str, Any] | None = None) -> Path:
    """Write ``<run_dir>/report.html`` from the files of the run (and first, when given, the
    final evaluation's PR curves as ``pr_curves.json``: ``COCOEvaluator.pr_curves``).

    Raises:
        DataError: ``run_dir`` is not a run directory or one of its files cannot be parsed.
    """
    run_dir = Path(run_dir)
    if pr_curves:
        write_text_atomic(run_dir / PR_CURVES_FILE, json.dumps(pr_curves, allow_nan=False))
    return write_text_atomic(run_dir / REPORT_FILE, render_run(load_run(run_dir)))
