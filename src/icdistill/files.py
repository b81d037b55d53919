"""The files icdistill writes and reads, in one place.

* ``checkpoints/last.pt`` (+ periodic snapshots): the **training checkpoint**
  (``format: icdistill-train``): the trainable module (student + distillation method), optimiser,
  scheduler and RNG states, the resolved config, the iteration. ``--resume`` reads it.
* ``detector.pt``: the **detector file** (``format: icdistill-detector``), a torchvision
  detector's ``state_dict`` plus what rebuilds it; every run writes one (a teacher run too), and
  it loads with torchvision alone. Files named ``student.pt`` (``format: icdistill-student``) of
  earlier versions read the same.
* Both are written atomically (:func:`save_checkpoint`) and read with :func:`load_checkpoint`,
  weights-only: a file that would need unpickling (which can run code) is refused unless the user
  opts in (``--allow-unsafe-pickle``, ``model.allow_unsafe_pickle``, ``teacher.allow_unsafe_pickle``).
* ``metrics.jsonl`` (one record per log step / periodic evaluation) and ``metrics.json`` (the
  final metrics), and the run's other JSON files: their readers and writers.
* Every file is written by the one atomic writer (:func:`write_atomic`: temp file, fsync,
  ``os.replace``), also text (:func:`write_text_atomic`) and bytes (:func:`write_bytes_atomic`).

Crash safety (ours): a write that fails for lack of space or permission is an :class:`OutputError`
naming the file, with the previous file left as it was; ``--resume`` takes the newest *valid*
checkpoint (:func:`find_resume_checkpoint`: ``last.pt``, else the newest periodic snapshot);
:func:`prune_snapshots` keeps the newest ``solver.keep_checkpoints`` snapshots.
"""


from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from icdistill.errors import ConfigError, DataError, ModelMismatchError, OutputError, UnsafeFileError

try:  # numpy >= 2
    from numpy._core import multiarray as np_multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray as np_multiarray  # type: ignore[no-redef]


# Why a write failed, in words a user acts on; any other OSError propagates unchanged.
OUTPUT_ERRNOS = {
    code: words
    for code, words in [
        (errno.ENOSPC, "no space left on the device"),
        (getattr(errno, "EDQUOT", None), "disk quota exceeded"),  # not on every platform
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
    ]
    if code is not None
}
# Test hook (tests/test_crash_safety.py only): see _pause_before_rename.
PAUSE_IN_SAVE_ENV = "ICDISTILL_TEST_PAUSE_IN_SAVE"


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically (:func:`write_atomic`).

    Returns:
        The checkpoint path.

    Raises:
        OutputError: the folder is full, read-only or not writable (``OUTPUT_ERRNOS``); the
            message names ``path``, which still holds its previous content (if any).
    """
    return write_atomic(path, lambda f: torch.save(state, f), pause_for_tests=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically: a reader never sees half a file.

    Raises:
        OutputError: the folder is full, read-only or not writable; names ``path``.
    """
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (a PNG, ...).

    Raises:
        OutputError: the folder is full, read-only or not writable; names ``path``.
    """
    return write_atomic(path, lambda f: f.write(data))


def write_atomic(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], Any], *, pause_for_tests: bool = False
) -> Path:
    """The one atomic writer: ``write(f)`` fills a temporary file in ``path``'s folder (so the
    final rename stays on one file system), which is flushed, fsynced and ``os.replace``-d onto
    ``path``. A crash or exception at any point leaves either the previous file or the complete
    new one at ``path``, never a partial file, and the temporary file is removed on failure.
    ``pause_for_tests``: honour the crash test's hook (checkpoints only).

    Raises:
        OutputError: the folder is full, read-only or not writable (``OUTPUT_ERRNOS``); the
            message names ``path``, which still holds its previous content (if any). Any other
            error propagates unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        error = _output_error(path, exc)
        if error is None:
            raise
        raise error from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if pause_for_tests:
            _pause_before_rename(path, tmp_name)
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        # torch.save reports a failed write as a RuntimeError whose context is the OSError.
        cause = _os_error_in(exc)
        error = _output_error(path, cause) if cause is not None else None
        if error is not None:
            raise error from exc
        raise
    # Persist the rename itself; not possible on every platform/file system, so best effort.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def _os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError in ``exc``'s chain of causes and contexts (``exc`` itself included)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _output_error(path: Path, exc: OSError) -> OutputError | None:
    """An :class:`OutputError` naming ``path`` for a full / read-only / forbidden folder, else None."""
    if exc.errno not in OUTPUT_ERRNOS:
        return None
    kept = f"the previous {path} is intact" if path.is_file() else f"no partial {path.name} was left"
    return OutputError(
        f"cannot write {path}: {_errno_words(exc)}; {kept}. "
        f"Free space in (or make writable) {path.parent}, or choose another output folder"
    )


def _errno_words(exc: OSError) -> str:
    """``no space left on the device (ENOSPC)``: why a write failed, for one of ``OUTPUT_ERRNOS``."""
    return f"{OUTPUT_ERRNOS[exc.errno]} ({errno.errorcode.get(exc.errno, exc.errno)})"


def _pause_before_rename(path: Path, tmp_name: str) -> None:
    """Test hook, inert unless ``ICDISTILL_TEST_PAUSE_IN_SAVE`` names a marker file: a save that
    replaces an existing file writes the temp file's name to the marker and sleeps up to a minute
    between the complete temp file and the rename, so a test can SIGKILL the process in the
    middle of a checkpoint write (tests/test_crash_safety.py)."""
    marker = os.environ.get(PAUSE_IN_SAVE_ENV)
    if not marker or not path.exists():
        return
    # The marker appears complete (written beside it, then renamed): a test polling for it must
    # never read it half-written.
    staged = Path(f"{marker}.partial")
    staged.write_text(tmp_name)
    os.replace(staged, marker)
    time.sleep(60)


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (a run's output folder) and check that files can be written into it.

    Raises:
        OutputError: it cannot be created or written (read-only, full, no permission).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"icdistill")
            probe.flush()
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            raise
        raise OutputError(
            f"cannot write into the output folder {path}: {_errno_words(exc)}; "
            "choose another --out or make it writable"
        ) from exc
    return path


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` and a newline to a log file (``metrics.jsonl``).

    Raises:
        OutputError: the folder is full, read-only or not writable; names ``path``.
    """
    path = Path(path)
    try:
        with path.open("a") as f:
            f.write(line + "\n")
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            raise
        raise OutputError(
            f"cannot write {path}: {_errno_words(exc)}; the checkpoints written so far are intact. "
            f"Free space in (or make writable) {path.parent}, then run again with --resume"
        ) from exc


METRICS_LOG = "metrics.jsonl"
METRICS_FILE = "metrics.json"


def _nan_to_null(record: dict[str, Any]) -> dict[str, Any]:
    # Strict JSON has no NaN: a metric that cannot be computed (e.g. APl without large objects) is null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}


def append_metrics_record(path: str | os.PathLike[str], iteration: int, record: dict[str, Any]) -> None:
    """One ``metrics.jsonl`` line: ``{"iter": iteration, **record}``, NaN as null.

    Raises:
        OutputError: the folder is full, read-only or not writable; names ``path``.
    """
    append_line(path, json.dumps({"iter": iteration, **_nan_to_null(record)}))


def read_metrics_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; lines that are blank or not valid JSON objects (e.g. a
    last line cut off by a crash) are skipped.

    Raises:
        DataError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metrics file not found: {path}")
    records: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def drop_metrics_after(path: str | os.PathLike[str], iteration: int) -> None:
    """Remove the ``metrics.jsonl`` records past ``iteration``: a run killed after its last
    checkpoint logged steps that its resume runs (and logs) again. A torn last line goes too."""
    kept = [r for r in read_metrics_jsonl(path) if isinstance(r.get("iter"), int) and r["iter"] <= iteration]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def write_metrics_json(path: str | os.PathLike[str], metrics: dict[str, Any]) -> Path:
    """``metrics.json``: flat keys, NaN as null so the file stays strict JSON; atomic.

    Raises:
        OutputError: the folder is full, read-only or not writable; names ``path``.
    """
    return write_text_atomic(path, json.dumps(_nan_to_null(metrics), indent=2))


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run's JSON file (``metrics.json``, ``data_report.json``, ``pr_curves.json``) as a dict;
    None when it is absent or empty.

    Raises:
        DataError: it cannot be parsed or does not hold a JSON object (naming the file).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: cannot be parsed ({exc})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


# The opt-in that lets a file be unpickled (which can run any code the file's author chose).
UNSAFE_PICKLE_FLAG = "--allow-unsafe-pickle"
UNSAFE_PICKLE_OPT_IN = f"pass {UNSAFE_PICKLE_FLAG}"
# The only objects besides tensors and plain data that checkpoints of earlier versions hold: numpy's
# MT19937 state (a uint32 ndarray, its dtype and dtype class) in ``rng.numpy``. ``_reconstruct`` is listed under
# numpy 2's module name and numpy 1's (files written before numpy 2 name it so); both are the same
# function. Files written now store that state as a tensor and need none of them.
OLD_CHECKPOINT_GLOBALS: list[Any] = [
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
    np_multiarray._reconstruct,
    (np_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
]


def load_torch_file(
    path: str | os.PathLike[str], *, map_location: Any = "cpu", allow_unsafe_pickle: bool = False,
    opt_in: str = UNSAFE_PICKLE_OPT_IN,
) -> Any:
    """Load a ``torch.save`` file with ``torch.load(weights_only=True)``: tensors, plain data and
    :data:`OLD_CHECKPOINT_GLOBALS` only, so a file from anywhere cannot run code when read.

    A file that holds other objects is refused unless ``allow_unsafe_pickle`` (the user's explicit
    opt-in, which unpickles it fully); ``opt_in`` ends the refusal: how this user opts in.

    Raises:
        UnsafeFileError: the file needs unpickling and the opt-in is off; one line naming the
            file, the objects it holds and ``opt_in``.
        DataError: missing, not a file, or unreadable (truncated, corrupt, not a torch file).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise DataError(f"checkpoint path is not a file: {path}")
    try:
        with torch.serialization.safe_globals(OLD_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...)
        needed = _globals_needing_unpickling(path, e)
        if needed and allow_unsafe_pickle:
            return torch.load(path, map_location=map_location, weights_only=False)
        if needed:
            raise UnsafeFileError(
                f"refusing to load {path}: it holds Python objects ({', '.join(needed)}) that only "
                f"unpickling can rebuild, and unpickling can run arbitrary code; if you trust where the "
                f"file came from, {opt_in}"
            ) from None
        raise DataError(
            f"{path} is not a valid icdistill checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
            "it may be truncated or written by another tool"
        ) from e


def _globals_needing_unpickling(path: Path, exc: Exception) -> list[str]:
    """The globals (``module.name``) that made a weights-only load of ``path`` fail; empty when it
    failed for another reason (a truncated or corrupt file)."""
    if not isinstance(exc, pickle.UnpicklingError):
        return []
    # torch names the first offending global in its message ("... GLOBAL posix.system ...", or
    # "Can only build ... but got <class 'x.Y'>" for an object whose state must be set).
    named = re.findall(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(exc))
    named = [a or b for a, b in named]
    if not named:
        return []
    try:  # a zip-format file: every global it needs, not only the first
        allowed = {g if isinstance(g, str) else f"{g.__module__}.{g.__qualname__}"
                   for g in (x[1] if isinstance(x, tuple) else x for x in OLD_CHECKPOINT_GLOBALS)}
        listed = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # legacy (non-zip) files cannot be listed; the message's one name stands
        listed = []
    return listed or named[:1]


def load_checkpoint(
    path: str | os.PathLike[str], map_location: Any = "cpu", *, allow_unsafe_pickle: bool = False,
    opt_in: str = UNSAFE_PICKLE_OPT_IN,
) -> dict[str, Any]:
    """Load a checkpoint (a training checkpoint, detector file or torchvision state dict) safely:
    :func:`load_torch_file` (weights only; ``allow_unsafe_pickle`` is the user's opt-in).

    Raises:
        UnsafeFileError: the file needs unpickling and the opt-in is off.
        DataError: ``path`` does not exist, is not a file, cannot be read as a torch
            checkpoint, or does not hold a dict.
    """
    state = load_torch_file(path, map_location=map_location, allow_unsafe_pickle=allow_unsafe_pickle, opt_in=opt_in)
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


LAST_CHECKPOINT = "last.pt"
# Periodic snapshots: checkpoints/model_<iteration, 7 digits>.pt.
SNAPSHOT_PATTERN = re.compile(r"model_(\d+)\.pt")


def snapshot_name(iteration: int) -> str:
    """The periodic snapshot's file name at ``iteration``: ``model_0000042.pt``."""
    return f"model_{iteration:07d}.pt"


def periodic_snapshots(checkpoint_dir: str | os.PathLike[str]) -> list[Path]:
    """The periodic snapshots in ``checkpoint_dir``, oldest (lowest iteration) first."""
    checkpoint_dir = Path(checkpoint_dir)
    found = []
    for p in checkpoint_dir.iterdir() if checkpoint_dir.is_dir() else []:
        m = SNAPSHOT_PATTERN.fullmatch(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def prune_snapshots(checkpoint_dir: str | os.PathLike[str], keep: int | None) -> list[Path]:
    """Delete all but the newest ``keep`` periodic snapshots (``None``: keep all); ``last.pt``
    is never touched. Returns the deleted paths."""
    if keep is None:
        return []
    if keep < 1:
        raise ConfigError(f"solver.keep_checkpoints must be a positive integer or null, got {keep!r}")
    doomed = periodic_snapshots(checkpoint_dir)[:-keep]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


def remove_stale_temp_files(checkpoint_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files (``.<name>.<random>.tmp``) a killed :func:`save_checkpoint`
    left behind; their content never reached a checkpoint name. Returns the removed paths."""
    stale = [p for p in Path(checkpoint_dir).glob(".*.tmp") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint ``--resume`` continues from, and the newer ones passed over as invalid
    (``rejected``: (path, why) pairs, newest first)."""

    path: Path
    state: dict[str, Any]
    rejected: tuple[tuple[Path, str], ...] = ()

    def fallback_message(self) -> str | None:
        """A line naming the invalid file(s) and the one taken instead; None when none was skipped."""
        if not self.rejected:
            return None
        skipped = "; ".join(f"{p} ({why})" for p, why in self.rejected)
        return (f"warning: not a valid training checkpoint: {skipped}; resuming from {self.path} "
                f"(iteration {self.state['iteration']}) instead")


def find_resume_checkpoint(checkpoint_dir: str | os.PathLike[str], *, allow_unsafe_pickle: bool = False) -> ResumePoint:
    """The newest valid training checkpoint in ``checkpoint_dir``: ``last.pt`` if it loads,
    else the newest periodic snapshot that does (a truncated or corrupt file is skipped).
    Loaded weights-only like every user file (``allow_unsafe_pickle``: the user's opt-in).

    Raises:
        ConfigError: there is no checkpoint at all.
        UnsafeFileError: a checkpoint needs unpickling and the opt-in is off (never skipped:
            the user decides).
        DataError: none of the checkpoints there is valid (each is named with why).
    """
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir / LAST_CHECKPOINT
    candidates = [p for p in [last, *reversed(periodic_snapshots(checkpoint_dir))] if p.is_file()]
    if not candidates:
        raise ConfigError(f"--resume: no checkpoint at {last}")
    rejected: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            state = load_checkpoint(path, allow_unsafe_pickle=allow_unsafe_pickle)
        except UnsafeFileError:
            raise
        except DataError as exc:
            rejected.append((path, _short_reason(exc)))
            continue
        if "trainable" not in state or "iteration" not in state:
            rejected.append((path, f"format {state.get('format')!r}, not {TRAIN_CHECKPOINT_FORMAT!r}"))
            continue
        return ResumePoint(path, state, tuple(rejected))
    listed = "; ".join(f"{p.name}: {why}" for p, why in rejected)
    raise DataError(
        f"--resume: no valid training checkpoint in {checkpoint_dir} ({listed}); "
        "start afresh without --resume or into another --out"
    )


def _short_reason(exc: DataError) -> str:
    cause = exc.__cause__
    text = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    text = " ".join(text.split())
    return "truncated or corrupt: " + (text if len(text) <= 120 else text[:117] + "...")


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the Python, numpy, torch CPU and (if available) CUDA generators, as tensors and
    plain data only (so a checkpoint loads with ``weights_only=True``)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_as_data(np.random.get_state()),
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
        np.random.set_state(_numpy_state_from_data(state["numpy"]))
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


def _numpy_state_as_data(state: tuple[Any, ...]) -> tuple[Any, ...]:
    """numpy's legacy MT19937 state with its uint32 key array as an int64 tensor (exact: every
    uint32 fits) and numpy scalars as Python numbers."""
    name, key, pos, has_gauss, cached_gaussian = state
    return (str(name), torch.from_numpy(np.asarray(key, dtype=np.int64)), int(pos), int(has_gauss),
            float(cached_gaussian))


def _numpy_state_from_data(state: Any) -> tuple[Any, ...]:
    """The tuple ``np.random.set_state`` takes, from :func:`_numpy_state_as_data`'s form or from
    the ndarray form of checkpoints written by earlier versions."""
    name, key, pos, has_gauss, cached_gaussian = state
    key = key.cpu().numpy() if isinstance(key, torch.Tensor) else key
    return (name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached_gaussian)
