"""Several runs side by side: who is the teacher and the baseline, the metrics table with the
share of the teacher–baseline gap each student closes, and ``compare.html``.

gap closed = (AP_student − AP_baseline) / (AP_teacher − AP_baseline), box AP. The teacher is a
run among the compared ones whose ``detector.pt`` (or ``checkpoints/last.pt``) a distillation
run names as ``teacher.weights`` (or ``--teacher``); without one, each student's own teacher
check (``teacher/bbox/AP`` in its metrics.json). The baseline is ``--baseline``, else a run
with ``distill.method: none`` that is not the teacher, with the student's ``solver.seed`` when
several are there (one baseline per seed: the benchmark's layout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from icdistill.errors import DataError
from icdistill.reporting.run_summary import RunSummary, load_run
from icdistill.teacher_vs_student import MEANING, row_flags

COLUMNS: tuple[str, ...] = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl",
                            "segm/AP", "time/iter_s")
COMPARE_FILE = "compare.html"
GAP_FORMULA = ("gap closed = (AP − AP baseline) / (AP teacher − AP baseline), box AP "
               "(n/a: no teacher or baseline AP, or a teacher not above the baseline)")


@dataclass(frozen=True)
class CompareRow:
    """One run of the table; ``gap_closed`` is a fraction (0.25 = 25 %), None where undefined."""

    name: str
    role: str  # "teacher" | "baseline" | "student"
    method: str
    values: dict[str, float | None]
    baseline: str | None = None
    teacher_ap: float | None = None
    teacher_source: str = ""
    gap_closed: float | None = None
    flags: tuple[str, ...] = ()  # "teacher weaker than student", "below baseline" (teacher_vs_student)


def run_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names: each path relative to the runs' common parent (``icd/seed0``)."""
    resolved = [p.resolve() for p in paths]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(os.path.commonpath(resolved))
    names = [p.name if p == common else str(p.relative_to(common)) for p in resolved]
    if len(set(names)) != len(names):
        raise DataError(f"the same run directory is given twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
    return names


def _pick(runs: Mapping[str, RunSummary], wanted: str | None, what: str) -> str | None:
    """The name of the run that ``wanted`` (a name or a path) designates."""
    if wanted is None:
        return None
    for name, run in runs.items():
        if wanted == name or Path(wanted).resolve() == run.path.resolve():
            return name
    raise DataError(f"--{what} {wanted}: not one of the compared runs ({', '.join(runs)})")


def find_teacher(runs: Mapping[str, RunSummary], teacher: str | None = None) -> str | None:
    """``teacher`` if given, else the run whose detector file a distillation run distils from."""
    if teacher is not None:
        return _pick(runs, teacher, "teacher")
    by_dir = {run.path.resolve(): name for name, run in runs.items()}
    for run in runs.values():
        weights = run.section("teacher").get("weights") if run.method != "none" else None
        if not weights:
            continue
        w = Path(str(weights)).expanduser().resolve()
        for candidate in (w.parent, w.parent.parent):  # <run>/detector.pt, <run>/checkpoints/last.pt
            if candidate in by_dir:
                return by_dir[candidate]
    return None


def find_baselines(runs: Mapping[str, RunSummary], teacher: str | None, baseline: str | None = None) -> dict[str, str]:
    """Student name -> the name of its baseline run (students without one are left out)."""
    fixed = _pick(runs, baseline, "baseline")
    candidates = [n for n, r in runs.items() if r.method == "none" and n != teacher]
    out = {}
    for name, run in runs.items():
        if name == teacher or name == fixed or (fixed is None and name in candidates):
            continue
        if fixed is not None:
            out[name] = fixed
        elif candidates:
            same_seed = [c for c in candidates if runs[c].seed == run.seed]
            out[name] = (same_seed or candidates)[0]
    return out


def compare_rows(runs: Mapping[str, RunSummary], *, baseline: str | None = None,
                 teacher: str | None = None) -> list[CompareRow]:
    """The table, one row per run in the given order (see the module docstring)."""
    teacher_name = find_teacher(runs, teacher)
    baselines = find_baselines(runs, teacher_name, baseline)
    # The baselines: --baseline alone, else every plain (method none) run but the teacher.
    used = {_pick(runs, baseline, "baseline")} if baseline else {
        n for n, r in runs.items() if r.method == "none" and n != teacher_name}
    rows = []
    for name, run in runs.items():
        values = {k: run.metric(k) for k in COLUMNS}
        role = "teacher" if name == teacher_name else "baseline" if name in used else "student"
        if teacher_name is not None:
            t_ap, source = runs[teacher_name].metric("bbox/AP"), teacher_name
        else:
            t_ap = run.metric("teacher/bbox/AP")
            source = "teacher check" if t_ap is not None else ""
        base = baselines.get(name)
        gap = None
        if role == "student" and base is not None:
            gap = gap_closed(values["bbox/AP"], runs[base].metric("bbox/AP"), t_ap)
        flags = ()
        if role == "student":
            flags = tuple(row_flags(values["bbox/AP"], t_ap, runs[base].metric("bbox/AP") if base else None))
        rows.append(CompareRow(name, role, run.method, values, base, t_ap if role == "student" else None,
                               source if role == "student" else "", gap, flags))
    return rows


def gap_closed(student: float | None, baseline: float | None, teacher: float | None) -> float | None:
    """(student − baseline) / (teacher − baseline); None when a value is missing or the teacher
    is no better than the baseline (no gap to close)."""
    if student is None or baseline is None or teacher is None or teacher <= baseline:
        return None
    return (student - baseline) / (teacher - baseline)


def table_cells(row: CompareRow, columns: Sequence[str]) -> list[Any]:
    """A row's cells: name, role, method, the columns, teacher AP, baseline, gap closed (%)."""
    student = row.role == "student"  # teacher AP and gap mean nothing for the other rows: blank
    gap = None if row.gap_closed is None else round(100.0 * row.gap_closed, 1)
    return [row.name, row.role, row.method, *(row.values[c] for c in columns),
            row.teacher_ap if student else "", row.baseline or "", gap if student else "", ", ".join(row.flags)]


def table_columns(rows: Sequence[CompareRow]) -> list[str]:
    """The metric columns that at least one run has."""
    return [c for c in COLUMNS if any(r.values[c] is not None for r in rows)]


def table_headers(columns: Sequence[str]) -> list[str]:
    return ["run", "role", "method", *(c.removeprefix("bbox/").replace("time/iter_s", "s/iter") for c in columns),
            "teacher AP", "baseline", "gap closed %", "flags"]


def markdown_table(rows: Sequence[CompareRow]) -> str:
    """The table as Markdown (what ``icdistill compare`` prints), with the formula below it."""
    columns = table_columns(rows)
    headers = table_headers(columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([" --- "] * 3 + [" ---: "] * (len(headers) - 3)) + "|"]
    for row in rows:
        cells = table_cells(row, columns)
        lines.append("| " + " | ".join(_text(c, key) for c, key in zip(cells, headers)) + " |")
    sources = sorted({r.teacher_source for r in rows if r.teacher_source})
    lines += ["", GAP_FORMULA + (f"; teacher AP from: {', '.join(sources)}" if sources else "; no teacher AP")]
    if any("teacher weaker than student" in r.flags for r in rows):
        lines += ["", f"teacher weaker than student: {MEANING}."]
    return "\n".join(lines) + "\n"


def _text(value: Any, header: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if header == "s/iter" else f"{value:.1f}"
    return str(value)


def default_out_dir(paths: Sequence[Path]) -> Path:
    """The runs' common parent folder (one run: its parent); the current folder when the runs
    share nothing below the filesystem root."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath(resolved))
    if len(resolved) == 1 or common in resolved:
        common = common.parent
    return Path.cwd() if common == Path(common.anchor) else common


def write_compare(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, *,
                  baseline: str | None = None, teacher: str | None = None) -> tuple[Path, str]:
    """Write ``<out_dir>/compare.html`` (default: :func:`default_out_dir`) and return its path
    and the Markdown table.

    Raises:
        DataError: no run given, a folder that is not a run, or ``baseline``/``teacher`` not
            among the runs.
    """
    from icdistill.reporting.compare_page import render_compare
    from icdistill.files import write_text_atomic

    if not run_dirs:
        raise DataError("compare needs at least one run directory")
    paths = [Path(p) for p in run_dirs]
    names = run_names(paths)
    runs = {n: load_run(p, n) for n, p in zip(names, paths)}
    rows = compare_rows(runs, baseline=baseline, teacher=teacher)
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    page = write_text_atomic(out / COMPARE_FILE, render_compare(runs, rows, out))
    return page, markdown_table(rows)
