"""The sections of a run's report page, each from a loaded :class:`RunSummary`; the compare
page reuses the plot and data sections with several runs."""

from __future__ import annotations

from typing import Any, Mapping

from icdistill.reporting import html as h
from icdistill.reporting.curves import ap_panels, diagnostic_panels, loss_panels, pr_panels
from icdistill.reporting.plots import panel_grid
from icdistill.reporting.run_summary import PR_CURVES_FILE, SUMMARY_NAMES, TASK_PREFIXES, RunSummary

TIME_KEYS = ("time/train_s", "time/iter_s", "time/method_stage_s", "time/eval_s", "world_size")
# viz/ pictures that are not the method's own: the detections (own section) and the training
# curves (drawn again, larger, in the loss section).
NOT_METHOD_PICTURES = ("detections_", "training_curves")
MAX_PROBLEM_FILES = 5
PR_FILE_NOTE = PR_CURVES_FILE
TEACHER_TASKS = tuple(f"teacher/{p}" for p in TASK_PREFIXES)  # the teacher check's metrics with a twin in this run


def metrics_section(run: RunSummary) -> tuple[str, str, h.Raw]:
    """COCO summary metrics per task and the run's timings."""
    tasks = [t.rstrip("/") for t in TASK_PREFIXES if any(k.startswith(t) for k in run.metrics)]
    body = []
    if tasks:
        rows = [[t, *(run.metric(f"{t}/{n}") for n in SUMMARY_NAMES)] for t in tasks]
        body.append(h.table(["task", *SUMMARY_NAMES], rows, css_class="metrics"))
        body.append(h.note("Percent, on the test set at the end of training (metrics.json); "
                           "n/a: not defined (e.g. no large objects in the test set)."))
    else:
        body.append(h.note("no final metrics yet (metrics.json is missing: the run has not finished)", warn=True))
    times = [[k, run.metrics[k]] for k in TIME_KEYS if k in run.metrics]
    if times:
        body.append(h.table(["timing", "value"], times))
    return h.section("metrics", "Metrics", body)


def per_class_section(run: RunSummary) -> tuple[str, str, h.Raw]:
    """Per-class metrics of the run, and the teacher check's per-class AP beside them."""
    names = run.class_names
    suffixes = list(dict.fromkeys(k.rsplit("-", 1)[0] for k in run.metrics
                                  for n in names if k.endswith(f"-{n}") and k.startswith((*TASK_PREFIXES, "teacher/"))))
    rows = [[n, *(run.metric(f"{s}-{n}") for s in suffixes)] for n in names]
    body = [h.table(["class", *suffixes], rows)] if suffixes else [h.note("no per-class metrics in metrics.json")]
    return h.section("per-class", "Per class", body)


def teacher_section(run: RunSummary) -> tuple[str, str, h.Raw] | None:
    """The teacher check (``teacher/*`` in metrics.json); a note for a distillation run without
    one; nothing for plain training."""
    numbers = {k: v for k, v in run.teacher_metrics().items() if "-" not in k}  # per class: in its table
    if numbers:
        rows = [[k, v, run.metric(k.removeprefix("teacher/")) if k.startswith(TEACHER_TASKS) else ""]
                for k, v in numbers.items()]
        body = [h.table(["teacher check", "teacher", "this run (final)"], rows),
                h.note("The teacher evaluated before the first step (distill.check_teacher) on "
                       "teacher/images test images; its per-class AP is in the per-class table.")]
    elif run.method != "none":
        body = [h.note("no teacher check in metrics.json (distill.check_teacher was off, or the run "
                       "predates the check)")]
    else:
        return None
    weights = run.section("teacher").get("weights")
    if weights and run.method != "none":
        body.append(h.note(f"teacher weights: {weights}"))
    return h.section("teacher", "Teacher check", body)


def curve_sections(runs: Mapping[str, RunSummary]) -> list[tuple[str, str, h.Raw]]:
    """AP vs iteration, losses and PR curves of the runs (overlaid when several)."""
    aps = ap_panels(runs)
    ap_body = [h.image(panel_grid(aps, xlabel="iteration", ylabel="AP (%)", cols=2), "AP vs iteration")] if aps else [
        h.note("no periodic evaluation logged (eval.period: 0) and no final metrics")]
    if aps:
        ap_body.append(h.note("Periodic evaluations (eval.period) from metrics.jsonl; the last point is the final "
                              "evaluation. Iterations are global (an ICD run's first ones are its decoder warm-up)."))
    curves = [p for run in runs.values() for p in run.pictures_named("training_curves")] if len(runs) == 1 else []
    losses = {} if curves else loss_panels(runs)
    if curves:  # one run: the picture the run drew of the same metrics.jsonl (drawn once, not twice)
        loss_body = [h.gallery(curves, captions=["viz/training_curves.png: losses, and the periodic AP and "
                                                 "method numbers"], wide=True)]
    elif losses:
        loss_body = [h.image(panel_grid(losses, xlabel="iteration"), "loss curves")]
    else:
        loss_body = [h.note("no losses logged (metrics.jsonl is missing or empty)")]
    return [h.section("ap", "AP vs iteration", ap_body), h.section("losses", "Losses", loss_body),
            pr_section(runs)]


def pr_section(runs: Mapping[str, RunSummary]) -> tuple[str, str, h.Raw]:
    body = []
    for task in ("bbox", "segm"):
        panels, left_out = pr_panels(runs, task)
        if panels:
            body.append(h.Raw(f"<h3>{h.esc(task)}</h3>"))
            body.append(h.image(panel_grid(panels, xlabel="recall", ylabel="precision", cols=4,
                                           unit_square=True, panel_inches=(3.4, 2.8)), f"{task} PR curves"))
            if left_out:
                body.append(h.note(f"{left_out} more classes are not drawn (their numbers are in {PR_FILE_NOTE})"))
    if body:
        body.append(h.note("Precision (its monotone envelope) at 101 recall points of the final evaluation "
                           "(COCO: area all, 100 detections per image); IoU 0.50:0.95 is the mean over the ten "
                           "IoU thresholds: with the COCO evaluator the curve whose mean is AP."))
    else:
        body.append(h.note("no PR curves: pr_curves.json is missing (no detections at the final evaluation, "
                           "or a run from an older version)"))
    return h.section("pr", "PR curves", body)



def method_section(run: RunSummary) -> tuple[str, str, h.Raw] | None:
    """The distillation method's diagnostics (ICD: ``icd/*``), their periodic values and its
    pictures (ICD: ``viz/attention_*.png``)."""
    numbers = run.method_metrics()
    pictures = [p for p in run.pictures if not p.name.startswith(NOT_METHOD_PICTURES)]
    # The periodic values are in viz/training_curves.png (the losses section) when the run drew it.
    panels = {} if run.pictures_named("training_curves") else diagnostic_panels({run.name: run})
    if not (numbers or pictures or panels):
        return None
    body = []
    if numbers:
        body.append(h.table(["diagnostic", "final value"], [[k, v] for k, v in numbers.items()]))
        if any(k.startswith("icd/") for k in numbers):
            body.append(h.note("icd/idf_auroc: 0.5 is chance (the decoder does not tell instances apart); "
                               "icd/attn_in_box vs icd/attn_in_box_uniform: attention inside the object's own "
                               "box against a uniform map (docs/method.md)."))
    if panels:
        body.append(h.image(panel_grid(panels, xlabel="iteration"), "method diagnostics vs iteration"))
    if pictures:
        body.append(h.gallery(pictures, wide=True))
    return h.section("method", f"Distillation method: {run.method}", body)


def detections_section(runs: Mapping[str, RunSummary], *, per_run: int = 6) -> tuple[str, str, h.Raw]:
    body = []
    for name, run in runs.items():
        pictures = run.pictures_named("detections_")[:per_run]
        if len(runs) > 1:
            body.append(h.Raw(f"<h3>{h.esc(name)}</h3>"))
        body.append(h.gallery(pictures) if pictures else h.note("no detection pictures (eval.viz_images: 0)"))
    return h.section("detections", "Detections", body)


def data_section(runs: Mapping[str, RunSummary]) -> tuple[str, str, h.Raw]:
    """data_report.json: per run and split, images, boxes and what was repaired or dropped."""
    rows = []
    for name, run in runs.items():
        for split, rep in (run.data_report or {}).items():
            if isinstance(rep, dict):
                rows.append([*([name] if len(runs) > 1 else []), split, rep.get("source", ""), _reader(rep),
                             rep.get("num_images"), rep.get("num_annotations"), rep.get("kept_annotations"),
                             _problems(rep)])
    headers = [*(["run"] if len(runs) > 1 else []), "split", "source", "reader", "images", "annotations", "kept",
               "problems"]
    body = [h.table(headers, rows)] if rows else [h.note("no data_report.json")]
    return h.section("data", "Data", body)


def _reader(rep: dict[str, Any]) -> str:
    """What the reader found (``reader``: format, layout, how the split was made), as one line."""
    reader = rep.get("reader")
    return "; ".join(f"{k}: {v}" for k, v in reader.items()) if isinstance(reader, dict) else ""


def _problems(rep: dict[str, Any]) -> str:
    counts = rep.get("counts") or {}
    files = rep.get("files") or {}
    parts = []
    for problem, n in counts.items():
        if n:
            named = [str(f) for f in (files.get(problem) or [])[:MAX_PROBLEM_FILES]]
            parts.append(f"{problem} {n}" + (f" (e.g. {', '.join(named)})" if named else ""))
    return "; ".join(parts) or "none"


def config_section(run: RunSummary) -> tuple[str, str, h.Raw]:
    body = [h.details("config.yaml (resolved)", h.pre(run.config_text))] if run.config_text else [
        h.note("no config.yaml")]
    return h.section("config", "Config", body)


def weaker_teacher_section(run: RunSummary) -> tuple[str, str, h.Raw] | None:
    """A warning section when the student passed its teacher's box AP (``teacher/weaker_than_student``
    in metrics.json, :mod:`icdistill.teacher_vs_student`); nothing otherwise."""
    from icdistill.teacher_vs_student import weaker_teacher_note

    note = weaker_teacher_note(run.metrics)
    return None if note is None else h.section("weaker-teacher", "Teacher weaker than student", [h.note(note, warn=True)])
