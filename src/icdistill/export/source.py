"""What ``icdistill export`` reads: a run directory, a detector file or a training checkpoint.

All three give the same :class:`ExportSource`: the detector's state dict, the ``model`` config
section it was built with, its class names and the test-time resize rule of its data (which the
ONNX sidecar documents). The rule comes from the training checkpoint's config, else from the
``config.yaml`` of the run the file sits in, else from the config defaults (said so in
:attr:`ResizeRule.origin`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import DataConfig, ModelConfig
from ..errors import DataError
from ..files import DETECTOR_FILE, detector_state_from_checkpoint, load_checkpoint, saved_model_config

TRAINING_CHECKPOINT = Path("checkpoints") / "last.pt"


@dataclass(frozen=True)
class ResizeRule:
    """The test transform (``data/transforms.py``, ``build_transforms(train=False)``): the short
    side goes to ``test_size`` unless the long side would pass ``max_size``."""

    test_size: int
    max_size: int
    origin: str  # where the two numbers were read

    def describe(self) -> dict[str, Any]:
        """The rule as the ONNX sidecar states it."""
        return {
            "test_size": self.test_size,
            "max_size": self.max_size,
            "rule": (
                "for an image of h x w pixels: scale = min(test_size / min(h, w), max_size / max(h, w)); "
                "resize to (int(h * scale), int(w * scale)) (floor) with bilinear interpolation and "
                "antialias (torchvision.transforms.v2.RandomShortestSize([test_size], max_size)); "
                "then RGB float32 in [0, 1], shape [1, 3, H, W]"
            ),
            "to_original_pixels": "divide box x by (W / w) and y by (H / h)",
            "from": self.origin,
        }

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the rule gives an image of ``height`` x ``width`` pixels."""
        scale = min(self.test_size / min(height, width), self.max_size / max(height, width))
        return int(height * scale), int(width * scale)


@dataclass(frozen=True)
class ExportSource:
    """A detector as read from disk.

    Attributes:
        path: the file read (a run directory resolves to its ``detector.pt``).
        state: the torchvision detector's ``state_dict`` (built with C + 1 classes).
        model_config: the ``model`` section it was trained with (``files.saved_model_config``).
        class_names: the C data class names, index = label 0..C-1.
        resize: the test-time resize rule of its data.
    """

    path: Path
    state: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    class_names: list[str]
    resize: ResizeRule

    def model_section(self, score_thresh: float | None = None) -> ModelConfig:
        """The ``model`` config that rebuilds this detector from :attr:`path` (no downloads);
        ``score_thresh`` replaces the saved one when given."""
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        saved = {k: v for k, v in self.model_config.items() if k in names}
        if saved.get("anchor_sizes") is not None:
            saved["anchor_sizes"] = tuple(saved["anchor_sizes"])
        section = ModelConfig(**saved)
        return dataclasses.replace(
            section, weights=str(self.path), backbone_weights=None, num_classes=None,
            score_thresh=section.score_thresh if score_thresh is None else float(score_thresh),
        )


def resolve_path(run_or_file: str | Path) -> Path:
    """A run directory -> its ``detector.pt`` (else ``checkpoints/last.pt``); a file -> itself.

    Raises:
        DataError: nothing there, or a directory holding neither file.
    """
    path = Path(run_or_file)
    if path.is_dir():
        for candidate in (path / DETECTOR_FILE, path / TRAINING_CHECKPOINT):
            if candidate.is_file():
                return candidate
        raise DataError(
            f"{path} is a directory without {DETECTOR_FILE} or {TRAINING_CHECKPOINT}; pass a run directory, "
            "a detector file or a training checkpoint"
        )
    if not path.exists():
        raise DataError(f"nothing to export: {path} does not exist (pass a run directory, a detector file or a training checkpoint)")
    return path


def read_source(run_or_file: str | Path, *, allow_unsafe_pickle: bool = False) -> ExportSource:
    """Read a run directory, a detector file (``detector.pt``, older ``student.pt``) or a training
    checkpoint (``checkpoints/last.pt``), weights-only unless ``allow_unsafe_pickle``
    (``--allow-unsafe-pickle``: the user trusts the file).

    Raises:
        UnsafeFileError: the file needs unpickling and the opt-in is off.
        DataError: missing or unreadable file.
        ModelMismatchError: a file of another tool.
    """
    path = resolve_path(run_or_file)
    ckpt = load_checkpoint(path, allow_unsafe_pickle=allow_unsafe_pickle)
    state = detector_state_from_checkpoint(ckpt, str(path))
    class_names = [str(n) for n in ckpt.get("class_names") or []]
    return ExportSource(path, state, saved_model_config(ckpt), class_names, _resize_rule(ckpt, path))


def _resize_rule(ckpt: dict[str, Any], path: Path) -> ResizeRule:
    """The data's test size from the checkpoint's config or the run's ``config.yaml``."""
    data = (ckpt.get("config") or {}).get("data")
    origin = f"the config inside {path}"
    if not data:
        # detector.pt sits in the run directory, last.pt one level down in checkpoints/.
        for run_config in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
            if run_config.is_file():
                data = (yaml.safe_load(run_config.read_text()) or {}).get("data")
                origin = str(run_config)
                break
    defaults = DataConfig()
    if not data:
        data = {}
        origin = f"the defaults of data.test_size / data.max_size (no run config found beside {path})"
    return ResizeRule(int(data.get("test_size", defaults.test_size)), int(data.get("max_size", defaults.max_size)), origin)
