"""The files icdistill writes and reads, in one place.

* ``checkpoints/last.pt`` (+ periodic snapshots): the **training checkpoint**
  (``format: icdistill-train``): the trainable module (student + distillation method), optimiser,
  scheduler and RNG states, the resolved config, the iteration. ``--resume`` reads it.
* ``detector.pt``: the **detector file** (``format: icdistill-detector``), a torchvision
  detector's ``state_dict`` plus what rebuilds it; every run writes one (a teacher run too), and
  it loads with torchvision alone. Files named ``student.pt`` (``format: icdistill-student``) of
  earlier versions read the same.
* Both are written atomically (:func:`save_checkpoint`) and read with :func:`load_checkpoint`.
"""


from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icdistill.errors import DataError, ModelMismatchError


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically.

    The state goes to a temporary file in the same directory (so the final rename stays on one
    file system), is flushed and fsynced, then ``os.replace``-d onto ``path``. A crash or
    exception at any point leaves either the previous file or the complete new one at ``path``,
    never a partial file, and the temporary file is removed on failure.

    Returns:
        The checkpoint path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    # Persist the rename itself; not possible on every platform/file system, so best effort.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Uses ``torch.load(weights_only=False)`` because our checkpoints hold plain Python objects
    (config dicts, RNG states, numpy arrays) besides tensors. That unpickles arbitrary objects,
    so only load checkpoints you (or this tool) produced; for third-party weights use a
    ``weights_only=True`` loader.

    Raises:
        DataError: ``path`` does not exist, is not a file, cannot be read as a torch
            checkpoint, or does not hold a dict.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise DataError(f"checkpoint path is not a file: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...)
        raise DataError(
            f"{path} is not a valid icdistill checkpoint ({type(e).__name__}: {e}); "
            "it may be truncated or written by another tool"
        ) from e
    if not isinstance(state, dict):
        raise DataError(
            f"{path} is not a valid icdistill checkpoint: expected a dict, got "
            f"{type(state).__name__}"
        )
    return state


TRAIN_CHECKPOINT_FORMAT = "icdistill-train"
DETECTOR_FORMAT = "icdistill-detector"
LEGACY_DETECTOR_FORMATS = ("icdistill-student",)
DETECTOR_FILE = "detector.pt"
# The training checkpoint's trainable state holds the detector under this prefix.
DETECTOR_PREFIX_IN_TRAINABLE = "student.model."


def detector_file(model_state: dict[str, torch.Tensor], model_config: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """The content of ``detector.pt``: the torchvision detector's state dict plus what is needed
    to rebuild it (``torchvision_num_classes`` counts the background class)."""
    return {
        "format": DETECTOR_FORMAT,
        "model": model_state,
        "model_config": model_config,
        "num_classes": len(class_names),
        "torchvision_num_classes": len(class_names) + 1,
        "class_names": list(class_names),
    }


def detector_state_from_checkpoint(ckpt: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The detector's state dict from a detector file (also an older ``student.pt``) or a
    training checkpoint."""
    if ckpt.get("format") in (DETECTOR_FORMAT, *LEGACY_DETECTOR_FORMATS) or ("model" in ckpt and "trainable" not in ckpt):
        return ckpt["model"]
    if "trainable" in ckpt:
        prefix = DETECTOR_PREFIX_IN_TRAINABLE
        return {k[len(prefix):]: v for k, v in ckpt["trainable"].items() if k.startswith(prefix)}
    raise ModelMismatchError(f"{source} is neither a detector file nor a training checkpoint of icdistill")


def saved_model_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` config section a detector file or training checkpoint was written with."""
    return ckpt.get("model_config") or (ckpt.get("config") or {}).get("model") or {}


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the Python, numpy, torch CPU and (if available) CUDA generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generators captured by :func:`capture_rng_state`.

    Missing entries are left alone. CUDA states are restored for as many devices as both the
    snapshot and this machine have (resuming on a different GPU count is allowed).
    """
    if "python" in state:
        random.setstate(_as_python_state(state["python"]))
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        # set_rng_state needs a CPU ByteTensor; map_location may have moved it.
        torch.set_rng_state(torch.as_tensor(state["torch"]).to("cpu", torch.uint8))
    if state.get("cuda") is not None and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(s).to("cpu", torch.uint8), i)


def _as_python_state(s: Any) -> tuple[Any, ...]:
    # random.setstate wants tuples; a round trip through some serialisers yields lists.
    version, internal, gauss = s
    return (version, tuple(internal), gauss)
