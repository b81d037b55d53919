"""The Python API: train, distil and evaluate from a notebook or a script.

    import icdistill

    teacher = icdistill.train("configs/demo/teacher.yaml", out="runs/teacher")
    student = icdistill.distill("configs/demo/icd.yaml", out="runs/icd",
                                overrides={"teacher.weights": teacher.detector_file})
    student.metrics["bbox/AP"], student.metrics["teacher/bbox/AP"]

A config is a YAML path, a dict of sections (as the YAML would hold) or a
:class:`~icdistill.config.Config`; overrides are ``--set``-style strings (``"solver.max_iter=100"``,
values parsed as YAML) or a dict (``{"solver.max_iter": 100}`` or nested sections, values as
they are). The CLI's ``train``, ``distill`` and ``eval`` call these same functions, so a run
started here is the run the command line would make: same run directory, same files.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from icdistill.config import Config, _deep_update, config_from_dict, load_config, parse_override
from icdistill.errors import ConfigError, DataError

ConfigLike = Union[str, "os.PathLike[str]", Mapping[str, Any], Config]
Overrides = Union[Sequence[str], Mapping[str, Any]]

__all__ = ["Result", "train", "distill", "evaluate", "resolve_config", "default_out_dir"]

# Metrics a Result's repr shows (the rest is in .metrics).
HEADLINE = ("bbox/AP", "bbox/AP50", "segm/AP", "teacher/bbox/AP")


@dataclass(frozen=True)
class Result:
    """What :func:`train`, :func:`distill` and :func:`evaluate` return.

    ``metrics``: flat keys, percent (``bbox/AP``, ``bbox/AP50``, …, ``bbox/AP-<class>``, a
    method's own ``icd/*``, the teacher check's ``teacher/*``, ``time/*``): what ``metrics.json``
    holds. ``out_dir``: the run directory (None for an evaluation without ``out``).
    ``metrics_file``: ``out_dir/metrics.json`` (None when nothing was written).
    ``detector_file``: a training run's ``detector.pt``; for an evaluation, the weights file
    evaluated. ``config``: the resolved config the run used."""

    metrics: dict[str, float]
    out_dir: Path | None
    metrics_file: Path | None
    detector_file: Path | None
    config: Config = field(repr=False)
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={self.metrics[k]:.2f}" for k in HEADLINE
                          if isinstance(self.metrics.get(k), (int, float)))
        return (f"Result(out_dir={str(self.out_dir)!r}, {shown}{', ' if shown else ''}"
                f"detector_file={str(self.detector_file)!r}, metrics_file={str(self.metrics_file)!r})")


def train(config: ConfigLike, out: str | os.PathLike[str] | None = None, overrides: Overrides = (),
          resume: bool = False, progress: bool = True) -> Result:
    """Train a detector without distillation (``distill.method`` is set to ``none``, with a
    note when the config named a method) and evaluate it; write the run directory ``out``
    (default ``runs/<config file name>``) as ``icdistill train`` does. ``resume`` continues from
    ``out/checkpoints/last.pt``. Raises :class:`~icdistill.errors.ICDistillError` subclasses for
    user mistakes (the CLI prints them and exits 2)."""
    return _run(config, out, overrides, distill=False, resume=resume, progress=progress)


def distill(config: ConfigLike, out: str | os.PathLike[str] | None = None, overrides: Overrides = (),
            resume: bool = False, progress: bool = True) -> Result:
    """Distil a student from the config's teacher (``distill.method``; ``none`` becomes the
    toolkit's default method), as ``icdistill distill`` does; otherwise as :func:`train`. The
    teacher check runs before the first step (``distill.check_teacher``): ``metrics`` then holds
    the teacher's ``teacher/bbox/AP``."""
    return _run(config, out, overrides, distill=True, resume=resume, progress=progress)


def evaluate(config: ConfigLike, weights: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
             overrides: Overrides = (), progress: bool = True) -> Result:
    """Evaluate a detector file (a run's ``detector.pt``) or a training checkpoint
    (``checkpoints/last.pt``) on the config's test set with its evaluator. With ``out``,
    ``out/metrics.json`` and ``out/per_class.md`` are written; without it nothing is."""
    import torch

    from icdistill.data import build_datasets, build_test_loader, resolve_with_masks
    from icdistill.detectors import build_model, family_facts
    from icdistill.engine.evaluate import evaluate_detector, write_metrics_json
    from icdistill.engine.setup import resolve_device
    from icdistill.evaluation import build_evaluator

    cfg = resolve_config(config, overrides)
    if not Path(weights).is_file():
        raise DataError(f"--weights: file not found: {weights}")
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, weights=str(weights)))
    with_masks = resolve_with_masks(cfg.data, family_facts(cfg.model.family).masks)
    _, test_set = build_datasets(cfg.data, with_masks=with_masks, progress=progress)
    device = resolve_device(cfg.solver.device)
    detector = build_model(cfg.model, test_set.num_classes, "model").to(device)
    loader = build_test_loader(test_set, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers)
    evaluator = build_evaluator(cfg.eval, test_set, with_masks=with_masks)
    with torch.no_grad():
        metrics = evaluate_detector(detector, loader, evaluator, device, progress=progress)
    out_dir = metrics_file = None
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_file = out_dir / "metrics.json"
        write_metrics_json(metrics_file, metrics, test_set.class_names)
    return Result(metrics, out_dir, metrics_file, Path(weights), cfg)


def _run(config: ConfigLike, out: str | os.PathLike[str] | None, overrides: Overrides, *, distill: bool,
         resume: bool, progress: bool) -> Result:
    from icdistill.distill.build import DEFAULT_METHOD, NO_METHOD
    from icdistill.engine.trainer import train as train_loop
    from icdistill.files import DETECTOR_FILE

    cfg = resolve_config(config, overrides)
    method = cfg.distill.method
    if distill and method == NO_METHOD:
        method = DEFAULT_METHOD
    if not distill and method != NO_METHOD:
        print(f"note: 'train' ignores distill.method={method}; use 'icdistill distill' to distil")
        method = NO_METHOD
    cfg = cfg.replace(distill=dataclasses.replace(cfg.distill, method=method))
    out_dir = Path(out) if out is not None else default_out_dir(config)
    run = train_loop(cfg, out_dir, resume=resume, progress=progress)
    metrics_file, detector = run.out_dir / "metrics.json", run.out_dir / DETECTOR_FILE
    return Result(run.metrics, run.out_dir, metrics_file if metrics_file.is_file() else None,
                  detector if detector.is_file() else None, cfg, tuple(run.extra.get("warnings", ())))


def default_out_dir(config: ConfigLike) -> Path:
    """``runs/<config file name without .yaml>``, the CLI's default; a dict or Config has no
    name, so ``out`` must be given."""
    if isinstance(config, (str, os.PathLike)):
        return Path("runs") / Path(config).stem
    raise ConfigError("out: a run directory is required when the config is a dict or a Config (no file name to "
                      "name the run after); pass out='runs/<name>'")


def resolve_config(config: ConfigLike, overrides: Overrides = ()) -> Config:
    """The validated :class:`Config` of a YAML path, a dict of sections or a Config, with
    ``overrides`` applied (strings ``"a.b=c"`` as ``--set`` parses them, or a dict of dotted
    keys / nested sections). Relative data paths of a YAML file are taken from its folder."""
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(config, (str, os.PathLike)) and not isinstance(overrides, Mapping):
        return load_config(config, _strings(overrides))  # exactly what the CLI's --set does
    if isinstance(config, Config):
        values = config.to_dict()
    elif isinstance(config, Mapping):
        values = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        values = load_config(config).to_dict()
    else:
        raise ConfigError(f"config: a YAML path, a dict or a Config, got {type(config).__name__}")
    updates = ([_nested(k, v) for k, v in overrides.items()] if isinstance(overrides, Mapping)
               else [parse_override(s) for s in _strings(overrides)])
    for update in updates:
        values = _deep_update(values, update)
    return config_from_dict(values)


def _strings(overrides: Sequence[Any]) -> list[str]:
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise ConfigError(f"overrides: 'key=value' strings or a dict, got {bad[0]!r}")
    return list(overrides)


def _nested(key: str, value: Any) -> dict[str, Any]:
    """``("a.b", v)`` -> ``{"a": {"b": v}}``; a Path value becomes its string."""
    parts = [p for p in str(key).split(".") if p]
    if not parts:
        raise ConfigError(f"overrides: empty key {key!r}")
    out: Any = str(value) if isinstance(value, os.PathLike) else value
    for part in reversed(parts):
        out = {part: out}
    return out
