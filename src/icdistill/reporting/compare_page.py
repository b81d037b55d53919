"""``compare.html``: the compare table, per-class AP, overlaid curves, the methods'
diagnostics, detections and data of several runs, and how their configs differ."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from icdistill.reporting import html as h
from icdistill.reporting import sections as s
from icdistill.teacher_vs_student import MEANING
from icdistill.reporting.compare import GAP_FORMULA, CompareRow, table_cells, table_columns, table_headers
from icdistill.reporting.curves import diagnostic_panels
from icdistill.reporting.plots import panel_grid
from icdistill.reporting.run_page import REPORT_FILE
from icdistill.reporting.run_summary import RunSummary

MAX_CONFIG_DIFFS = 60


def render_compare(runs: Mapping[str, RunSummary], rows: Sequence[CompareRow], out_dir: Path) -> str:
    """The whole compare page; links to each run's own report.html are relative to ``out_dir``."""
    parts = [table_section(runs, rows, out_dir), per_class_section(runs), *s.curve_sections(runs),
             diagnostics_section(runs), s.detections_section(runs, per_run=2), s.data_section(runs),
             config_diff_section(runs)]
    return h.page(f"icdistill compare: {len(runs)} runs", ", ".join(runs), [p for p in parts if p is not None])


def table_section(runs: Mapping[str, RunSummary], rows: Sequence[CompareRow], out_dir: Path):
    columns = table_columns(rows)
    body = [h.table(table_headers(columns), [table_cells(r, columns) for r in rows], css_class="metrics")]
    sources = sorted({r.teacher_source for r in rows if r.teacher_source})
    body.append(h.note(f"Percent on each run's test set. {GAP_FORMULA}. Roles: the teacher is the run a "
                       "distillation run names as teacher.weights (or --teacher); a baseline has distill.method "
                       "none (or is --baseline). Teacher AP from: " + (", ".join(sources) or "none found") + "."))
    if any("teacher weaker than student" in r.flags for r in rows):
        body.append(h.note(f"teacher weaker than student: {MEANING}.", warn=True))
    links = []
    for name, run in runs.items():
        report = run.path / REPORT_FILE
        if report.is_file():
            href = Path(os.path.relpath(report.resolve(), out_dir.resolve())).as_posix()
            links.append(f'<a href="{h.esc(href)}">{h.esc(name)}</a>')
    if links:
        body.append(h.Raw("<p>Run reports: " + " · ".join(links) + "</p>"))
    return h.section("table", "Runs", body)


def per_class_section(runs: Mapping[str, RunSummary]):
    """Box AP per class (rows) and run (columns)."""
    classes = list(dict.fromkeys(c for run in runs.values() for c in run.class_names))
    if not classes:
        return None
    rows = [[c, *(run.metric(f"bbox/AP-{c}") for run in runs.values())] for c in classes]
    return h.section("per-class", "Per-class box AP", [h.table(["class", *runs], rows)])


def diagnostics_section(runs: Mapping[str, RunSummary]):
    """The methods' final diagnostics (run × key) and their periodic values overlaid."""
    own = {n: r for n, r in runs.items() if r.method_metrics()}
    checked = {n: r for n, r in runs.items() if r.teacher_metrics()}
    keys = list(dict.fromkeys(k for run in own.values() for k in run.method_metrics()))
    teacher_keys = list(dict.fromkeys(k for run in checked.values() for k in run.teacher_metrics() if "-" not in k))
    panels = diagnostic_panels(runs)
    if not (keys or teacher_keys or panels):
        return None
    body = []
    if keys:  # keys down, runs across: a table as wide as the runs are many, not the keys
        body.append(h.table(["diagnostic", *own], [[k, *(_num(r.metrics.get(k)) for r in own.values())] for k in keys]))
    if teacher_keys:
        body.append(h.table(["teacher check", *checked],
                            [[k, *(_num(r.metrics.get(k)) for r in checked.values())] for k in teacher_keys]))
    if panels:
        body.append(h.image(panel_grid(panels, xlabel="iteration"), "method diagnostics vs iteration"))
    return h.section("method", "Distillation diagnostics", body)


def config_diff_section(runs: Mapping[str, RunSummary]):
    """The config keys whose values differ between the runs."""
    flat = {name: _flatten(run.config) for name, run in runs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    differ = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
    if not differ:
        body = [h.note("the runs' configs are identical" if len(runs) > 1 else "one run")]
    else:
        rows = [[k, *(_cell(flat[n].get(k, "—")) for n in runs)] for k in differ[:MAX_CONFIG_DIFFS]]
        body = [h.table(["config key", *runs], rows)]
        if len(differ) > MAX_CONFIG_DIFFS:
            body.append(h.note(f"{len(differ) - MAX_CONFIG_DIFFS} more keys differ"))
    return h.section("config", "Config differences", body)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _cell(value: Any) -> Any:
    """Numbers stay numbers (right-aligned); everything else shows as text."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _num(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float)) else str(value)
