"""Everything a report shows of one run directory, read from its files (no model).

A run directory (see docs/architecture.md) holds ``metrics.json`` (final metrics, flat keys in
percent), ``metrics.jsonl`` (losses per log step, ``eval/*`` per periodic evaluation),
``config.yaml``, ``data_report.json``, ``pr_curves.json`` (precision/recall of the final COCO
evaluation) and ``viz/*.png``. Any of them may be missing (a run still going, an ``eval`` output
folder); only a folder with neither metrics file is not a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icdistill.errors import DataError
from icdistill.files import METRICS_FILE, METRICS_LOG, read_json_object, read_metrics_jsonl

PR_CURVES_FILE = "pr_curves.json"
# Metric families that are the detector's own numbers; every other "<prefix>/..." key of
# metrics.json except time/ and teacher/ is a distillation method's diagnostic (ICD: icd/*).
TASK_PREFIXES: tuple[str, ...] = ("bbox/", "segm/")
SUMMARY_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass(frozen=True)
class RunSummary:
    """One run directory, loaded.

    ``metrics``: metrics.json (null stays None); ``records``: metrics.jsonl lines (dicts with
    ``iter``); ``config``: config.yaml parsed ({} when absent) and ``config_text`` as written;
    ``data_report``: data_report.json or None; ``pr_curves``: pr_curves.json (per task
    ``{"recall": [R], "classes": {name: {"AP50": [R], "AP": [R]} | None}}``) or None;
    ``pictures``: ``viz/*.png``, sorted.
    """

    path: Path
    name: str
    metrics: dict[str, Any]
    records: list[dict[str, Any]]
    config: dict[str, Any]
    config_text: str
    data_report: dict[str, Any] | None
    pr_curves: dict[str, Any] | None
    pictures: list[Path] = field(default_factory=list)

    def section(self, name: str) -> dict[str, Any]:
        """A config section (``"model"``, ``"distill"`` ...), {} when absent."""
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def method(self) -> str:
        """``distill.method`` of the run (``none`` for plain training or without a config)."""
        return str(self.section("distill").get("method", "none"))

    @property
    def seed(self) -> Any:
        return self.section("solver").get("seed")

    @property
    def model_text(self) -> str:
        """e.g. ``retinanet resnet18`` (empty without a config)."""
        model = self.section("model")
        return " ".join(str(model[k]) for k in ("family", "backbone") if model.get(k))

    @property
    def class_names(self) -> list[str]:
        """The test set's classes (data_report.json), else the names in ``bbox/AP-<name>``."""
        if self.data_report and isinstance(self.data_report.get("test"), dict):
            names = self.data_report["test"].get("classes")
            if isinstance(names, list) and names:
                return [str(n) for n in names]
        return [k.split("-", 1)[1] for k in self.metrics if k.startswith("bbox/AP-")]

    @property
    def last_iter(self) -> int | None:
        """The highest iteration in metrics.jsonl (the final evaluation's), or None."""
        iters = [r["iter"] for r in self.records if _is_number(r.get("iter"))]
        return int(max(iters)) if iters else None

    def metric(self, key: str) -> float | None:
        """A finite number of metrics.json, else None."""
        value = self.metrics.get(key)
        return float(value) if _is_number(value) and math.isfinite(value) else None

    def method_metrics(self) -> dict[str, Any]:
        """The distillation method's own final numbers (ICD: ``icd/*``)."""
        return {k: v for k, v in self.metrics.items() if is_method_key(k)}

    def teacher_metrics(self) -> dict[str, Any]:
        """The teacher check's numbers (``teacher/*``), {} when the run has none."""
        return {k: v for k, v in self.metrics.items() if k.startswith("teacher/")}

    def series(self, key: str, *, with_final: bool = False) -> list[tuple[float, float]]:
        """(iteration, value) of ``key`` in metrics.jsonl, finite values only; with
        ``with_final``, metrics.json's value of the key without ``eval/`` at the last iteration."""
        pts = [(float(r["iter"]), float(r[key])) for r in self.records
               if _is_number(r.get("iter")) and _is_number(r.get(key)) and math.isfinite(r[key])]
        final = self.metric(key.removeprefix("eval/")) if with_final else None
        if final is not None and self.last_iter is not None and all(x != self.last_iter for x, _ in pts):
            pts.append((float(self.last_iter), final))
        return sorted(pts)

    def logged_keys(self, predicate) -> list[str]:
        """Numeric metrics.jsonl keys for which ``predicate(key)`` holds, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.records:
            for k, v in r.items():
                if k != "iter" and _is_number(v) and predicate(k):
                    seen.setdefault(k, None)
        return list(seen)

    @classmethod
    def of_records(cls, records: list[dict[str, Any]], name: str = "") -> RunSummary:
        """A run known only by its ``metrics.jsonl`` records (the training curves of a run in
        progress)."""
        return cls(Path(), name, {}, records, {}, "", None, None)

    def pictures_named(self, prefix: str) -> list[Path]:
        return [p for p in self.pictures if p.name.startswith(prefix)]


def is_method_key(key: str) -> bool:
    """A distillation method's diagnostic in metrics.json (``icd/idf_auroc`` ...)."""
    return "/" in key and not key.startswith((*TASK_PREFIXES, "time/", "teacher/"))


def load_run(path: str | Path, name: str | None = None) -> RunSummary:
    """Read a run directory; ``name`` defaults to the folder name.

    Raises:
        DataError: the folder does not exist, has neither ``metrics.json`` nor
            ``metrics.jsonl``, or one of its JSON/YAML files cannot be parsed (naming the file).
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"run directory not found: {path}")
    metrics_file, log_file = path / METRICS_FILE, path / METRICS_LOG
    if not metrics_file.is_file() and not log_file.is_file():
        raise DataError(f"not a run directory: {path} (no metrics.json or metrics.jsonl)")
    config_text = _read_text(path / "config.yaml")
    config = _parse(path / "config.yaml", config_text, yaml.safe_load) if config_text else {}
    return RunSummary(
        path=path,
        name=name or path.resolve().name,
        metrics=read_json_object(metrics_file) or {},
        records=read_metrics_jsonl(log_file) if log_file.is_file() else [],
        config=config if isinstance(config, dict) else {},
        config_text=config_text,
        data_report=read_json_object(path / "data_report.json"),
        pr_curves=read_json_object(path / PR_CURVES_FILE),
        pictures=sorted((path / "viz").glob("*.png")),
    )


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _parse(path: Path, text: str, parser) -> Any:
    try:
        return parser(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: cannot be parsed ({exc})") from exc


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
