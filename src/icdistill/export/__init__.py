"""``icdistill export``: a trained detector as a detector file (``--format torchvision``) or an
ONNX file with its sidecar JSON (``--format onnx``), from a run directory, a detector file or a
training checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, DataError
from ..files import detector_file, save_checkpoint
from .source import ExportSource, ResizeRule, read_source

FORMATS = ("torchvision", "onnx")

__all__ = ["FORMATS", "ExportSource", "ResizeRule", "build_student", "export", "read_source"]


def build_student(source: ExportSource, score_thresh: float | None = None):
    """The detector adapter of ``source``, rebuilt from its saved model config with its weights
    (``detectors/build.py``), in eval mode; ``score_thresh`` replaces the saved threshold."""
    from ..detectors.build import build_model

    return build_model(source.model_section(score_thresh), len(source.class_names), "model").eval()


def export(
    run_or_file: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str = "torchvision",
    *, score_thresh: float | None = None, allow_unsafe_pickle: bool = False,
) -> list[Path]:
    """Export ``run_or_file`` to ``out`` in format ``fmt``; returns the files written.

    ``torchvision``: the detector file (``files.detector_file``: state dict + what rebuilds it).
    ``onnx``: ``out`` (the ONNX file) and ``out`` with suffix ``.json`` (the sidecar), see
    :mod:`icdistill.export.onnx`; ``score_thresh`` (default: the detector's) is baked in.
    ``run_or_file`` is read weights-only unless ``allow_unsafe_pickle`` (the user trusts it).

    Raises:
        ConfigError: an unknown format, or ``score_thresh`` with the torchvision format.
        DataError / ModelMismatchError: the input is missing or not an icdistill detector.
        ExportError: ONNX packages missing, or the family cannot be exported.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is unknown; valid formats: {', '.join(FORMATS)}")
    if fmt == "onnx":
        from .onnx import export_onnx, require_onnx_packages

        require_onnx_packages()  # before minutes of loading a large model
        source = read_source(run_or_file, allow_unsafe_pickle=allow_unsafe_pickle)
        if not source.class_names:
            raise DataError(f"{source.path} holds no class names; export the run's checkpoints/last.pt instead")
        student = build_student(source, score_thresh)
        return list(export_onnx(student, out, class_names=source.class_names, resize=source.resize))
    if score_thresh is not None:
        raise ConfigError("--score-thresh applies to --format onnx only (the detector file keeps model.score_thresh)")
    source = read_source(run_or_file, allow_unsafe_pickle=allow_unsafe_pickle)
    return [save_checkpoint(Path(out), detector_file(source.state, source.model_config, source.class_names))]
