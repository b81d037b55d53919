"""The report of a data set: what its reader and its checks found, repaired and left out.

A report is a plain dict (``data_report.json`` holds one per split)::

    {"num_images", "num_annotations", "kept_annotations",
     "counts": {problem: n}, "files": {problem: sorted file names},
     "reader"?: {"format", "layout", "split", ...},
     "merged_classes"?: {alias: {"into", "annotations"}},
     "similar_class_names"?: [{name: annotations}], "grouping_category"?: name}

Problems are those of :data:`icdistill.data.coco_repair.PROBLEMS`, plus what a folder reader
skipped (e.g. ``images_without_xml``) and ``empty_images_dropped``.
"""

from __future__ import annotations

import logging
from typing import Any

from .class_names import describe_similar

__all__ = ["add_reader_report", "count_file", "new_report", "note_classes", "report_summary"]

log = logging.getLogger(__name__)


def new_report(images: list[dict[str, Any]], num_annotations: int, counts: dict[str, int],
               files: dict[str, set[str]]) -> dict[str, Any]:
    """The report of the image records ``images`` (each with its kept ``labels``) read from
    ``num_annotations`` annotations, with the ``counts`` and ``files`` of each problem."""
    return {
        "num_images": len(images),
        "num_annotations": num_annotations,
        "kept_annotations": int(sum(len(r["labels"]) for r in images)),
        "counts": counts,
        "files": {p: sorted(v) for p, v in files.items()},
    }


def note_classes(report: dict[str, Any], source: str, merged: dict[str, dict],
                 similar: list[dict[str, int]], grouping: str | None) -> None:
    """Add what was found about the class names (see the module docstring) and log it:
    ``similar`` names as a warning (they may be one class spelled two ways)."""
    if merged:
        report["merged_classes"] = merged
    if similar:
        report["similar_class_names"] = similar
        log.warning("%s: %s", source, describe_similar(similar))
    if grouping:
        report["grouping_category"] = grouping
        log.info("%s: left out category %r: it groups all the others and has no box",
                 source, grouping)


def report_summary(report: dict[str, Any]) -> str:
    """One line naming each problem found, with its count and a few of its files."""
    parts = []
    for p, n in report["counts"].items():
        if n:
            names = report["files"][p]
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{n} {p.replace('_', ' ')} ({shown})")
    return "; ".join(parts) if parts else "no problems"


def add_reader_report(report: dict[str, Any], info: dict[str, Any],
                      skipped: dict[str, list[str]]) -> None:
    """Add what a folder reader found before the COCO dict: ``info`` under ``"reader"`` (e.g.
    ``layout``, ``split``: how the split was made) and each ``skipped`` reason (e.g.
    ``images_without_xml``) as a problem with its count and files."""
    report["reader"] = dict(info)
    for problem, names in skipped.items():
        report["counts"][problem] = len(names)
        report["files"][problem] = sorted(names)


def count_file(report: dict[str, Any], problem: str, file_name: str) -> None:
    """Count ``file_name`` under ``problem`` once (e.g. an image that failed when loaded)."""
    names = report["files"].setdefault(problem, [])
    if file_name not in names:
        names.append(file_name)
        names.sort()
        report["counts"][problem] = len(names)
