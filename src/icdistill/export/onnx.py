"""``--format onnx``: the student as an ONNX file plus a JSON sidecar that says how to feed it.

Which exporter: torch 2.14 offers ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` +
onnxscript, the default) and the TorchScript-based tracer (``dynamo=False``). We use the
TorchScript one, because the dynamo one cannot take torchvision's detection post-processing
with a dynamic image size: tried on RetinaNet (torch 2.14.1, torchvision 0.29.1), ``torch.export``
stops at data-dependent Python branches inside torchvision (``batched_nms``'s
``boxes.numel() > 4000``, then ``boxes.numel() == 0`` in its coordinate trick:
``GuardOnDataDependentSymNode``), i.e. the number of boxes surviving the score threshold, which
is only known at run time. torchvision's detection code is written for the tracer instead
(``torchvision._is_tracing()`` branches: ``_topk_min``, ``clip_boxes_to_image``, the traceable
mask-paste loop, ``batched_nms`` -> ONNX ``NonMaxSuppression``, ``roi_align`` -> ``RoiAlign``),
and with it the file takes any image size and matches PyTorch (``tests/test_export.py``).

The file: input ``image`` float32 [1, 3, H, W] (RGB in [0, 1], H and W dynamic); outputs
``boxes`` float32 [K, 4] (xyxy, pixels of the input), ``scores`` float32 [K], ``labels`` int64
[K] (0..C-1), and for Mask R-CNN ``masks`` float32 [K, 1, H, W]. The sidecar ``<out>.json``
holds the resize rule, the class names and the post-processing numbers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..detectors.base import DetectorAdapter
from ..errors import ExportError
from ..structures import IMAGENET_MEAN, IMAGENET_STD
from .deploy import DeployedDetector
from .source import ResizeRule

ONNX_FORMAT = "icdistill-onnx"
# NonMaxSuppression (10), RoiAlign (10/16) and every op the models need exist in opset 17, which
# onnxruntime >= 1.18 runs; the tracer's symbolic functions cover it.
OPSET = 17
# onnx checks the written file; onnxruntime runs it (README); both come with icdistill[export].
EXPORT_PACKAGES = ("onnx", "onnxruntime")
INPUT_NAME = "image"


def require_onnx_packages() -> None:
    """ExportError naming ``pip install icdistill[export]`` when onnx / onnxruntime are missing."""
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"--format onnx needs the package(s) {', '.join(missing)}, which are not installed; "
            "run: pip install icdistill[export]"
        )


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.json``: where the feeding instructions go."""
    return Path(out).with_suffix(".json")


def export_onnx(
    adapter: DetectorAdapter,
    out: str | os.PathLike[str],
    *,
    class_names: list[str],
    resize: ResizeRule,
    example_size: tuple[int, int] | None = None,
) -> tuple[Path, Path]:
    """Write ``adapter`` as an ONNX file ``out`` and its sidecar JSON; returns both paths.

    Args:
        adapter: the detector (any mode; exported in eval mode). Its score threshold, NMS IoU and
            detections per image are baked into the file.
        class_names: the C names, index = output label.
        resize: the test-time resize rule, written into the sidecar.
        example_size: (H, W) of the tracing input (default: the resize rule applied to a 4:3
            image); H and W stay dynamic in the file.

    Raises:
        ExportError: onnx / onnxruntime missing, a family without an ONNX path, or the exporter
            failing (its message is included).
    """
    require_onnx_packages()
    was_training = adapter.training
    try:
        return _export(DeployedDetector(adapter), adapter, Path(out), class_names, resize, example_size)
    finally:
        adapter.train(was_training)  # the exporter leaves modules in the mode it found the wrapper in


def _export(
    module: DeployedDetector, adapter: DetectorAdapter, out: Path, class_names: list[str], resize: ResizeRule,
    example_size: tuple[int, int] | None,
) -> tuple[Path, Path]:
    height, width = example_size or resize.size_for(3 * resize.test_size, 4 * resize.test_size)
    example = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_via_temp(out, lambda tmp: _trace_to_onnx(module, example, tmp, adapter.family))
    sidecar = sidecar_path(out)
    text = json.dumps(_sidecar(module, adapter, class_names, resize, (height, width)), indent=2) + "\n"
    _write_via_temp(sidecar, lambda tmp: tmp.write_text(text))
    return out, sidecar


def _trace_to_onnx(module: DeployedDetector, example: torch.Tensor, path: Path, family: str) -> None:
    outputs = module.output_names
    dynamic = {INPUT_NAME: {2: "height", 3: "width"}, **{name: {0: "detections"} for name in outputs}}
    if "masks" in outputs:
        dynamic["masks"] = {0: "detections", 2: "height", 3: "width"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer's notes (TracerWarning, the legacy-exporter DeprecationWarning, torchvision's
            # scripted helpers) are about code paths torchvision wrote for it; the test checks the result.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=outputs, dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        import onnx  # optional dependency, checked by require_onnx_packages

        onnx.checker.check_model(str(path))  # before it replaces anything
    except Exception as e:  # the tracer raises many types; the user gets one clear line
        raise ExportError(f"exporting the {family} detector to ONNX failed ({type(e).__name__}: {e})") from e


def _sidecar(
    module: DeployedDetector, adapter: DetectorAdapter, class_names: list[str], resize: ResizeRule,
    example_size: tuple[int, int],
) -> dict[str, Any]:
    outputs = {
        "boxes": "float32 [K, 4], xyxy in pixels of the input image (clipped to it)",
        "scores": "float32 [K], each >= score_thresh",
        "labels": "int64 [K], 0..C-1, an index into class_names",
    }
    if module.with_masks:
        outputs["masks"] = "float32 [K, 1, H, W], mask probabilities over the input image (threshold 0.5)"
    return {
        "format": ONNX_FORMAT,
        "family": adapter.family,
        "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=False), opset {OPSET}",
        "input": {
            "name": INPUT_NAME, "dtype": "float32", "shape": [1, 3, "H", "W"], "dynamic": ["H", "W"],
            "values": "RGB in [0, 1], NOT normalised (the file normalises)", "traced_at": list(example_size),
        },
        "resize": resize.describe(),
        "in_the_file": [
            f"ImageNet normalisation (mean {list(IMAGENET_MEAN)}, std {list(IMAGENET_STD)})",
            "zero padding at bottom/right to multiples of 32",
            "backbone, FPN and head", "box decoding", "score threshold",
            "per-class NMS (ONNX NonMaxSuppression)", "the top detections_per_image",
        ],
        **module.settings(),
        "class_names": list(class_names),
        "outputs": outputs,
    }


def _write_via_temp(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` into a temp file beside ``path``, then ``os.replace`` it onto ``path``:
    a failed export never leaves a partial file nor destroys the previous one."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
