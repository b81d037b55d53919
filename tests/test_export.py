"""``icdistill export``: the detector file, and ONNX files whose onnxruntime detections equal the
PyTorch student's (boxes to 1e-3, same labels, scores to 1e-4), also at an image size other
than the one the file was traced at (dynamic height and width)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from icdistill.cli import main
from icdistill.config import save_config
from icdistill.data import build_datasets, resolve_with_masks
from icdistill.detectors import FAMILIES as FAMILY_NAMES, build_detector, build_model, family_facts
from icdistill.detectors.base import DetectorAdapter
from icdistill.errors import ExportError
from icdistill.export import ResizeRule, read_source
from icdistill.export.deploy import DeployedDetector, check_exportable
from icdistill.export.onnx import export_onnx, sidecar_path
from icdistill.files import detector_file, load_checkpoint, save_checkpoint
from icdistill.structures import collate_batch

ort = pytest.importorskip("onnxruntime")

# Per family: the tiny overrides it needs on top of conftest's. RetinaNet: GroupNorm head towers
# (a v1 head at this width trained for a few steps scores every anchor alike, ~0.01); FCOS:
# GroupNorm(32) needs two channels per group on the 1x1 P7 map of a 64 px image.
FAMILIES = {
    "retinanet": ["model.head_norm=gn", "model.fpn_channels=64"],
    "fcos": ["model.fpn_channels=64"],
    "faster_rcnn": [],
    "mask_rcnn": [],
}
OTHER_SIZE = (80, 110)  # neither the traced size nor a multiple of 32
KEEP = 8  # about this many detections per image at the chosen score threshold


def trained(tiny_config, family: str, steps: int = 3):
    """(config, adapter in eval mode, test images [3, 64, 96] in [0, 1], class names) after a
    few SGD steps on the tiny shapes data."""
    cfg = tiny_config(f"model.family={family}", *FAMILIES[family])
    torch.manual_seed(0)
    train_set, test_set = build_datasets(cfg.data, with_masks=resolve_with_masks(cfg.data, family_facts(family).masks), progress=False)
    adapter = build_model(cfg.model, train_set.num_classes).train()
    if family_facts(family).two_stage:
        # 64 instead of 512 sampled RoIs per image: Mask R-CNN's 256-wide mask head on them
        # dominates the test's time otherwise.
        adapter.model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    opt = torch.optim.SGD(adapter.parameters(), lr=0.01, momentum=0.9)
    for step in range(steps):
        batch = collate_batch([train_set[(2 * step + i) % len(train_set)] for i in range(2)])
        losses = adapter.losses(batch.images, batch.image_sizes, adapter.features(batch.images), batch.targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    return cfg, adapter.eval(), [test_set[i][0] for i in range(2)], train_set.class_names


def postprocess(adapter: DetectorAdapter):
    """The module holding the detector's score_thresh / detections_per_img."""
    return adapter.model.roi_heads if family_facts(adapter.family).two_stage else adapter.model


def pick_score_thresh(adapter: DetectorAdapter, images: list[torch.Tensor]) -> float:
    """A threshold that keeps about KEEP detections per image and lies at least 1e-4 from every
    score (so a 1e-7 difference between onnxruntime and PyTorch cannot move a box across it).

    A barely trained detector scores everything low, so its usual 0.05 may keep nothing or
    hundreds. Detections above t at threshold 0 are those at threshold t (NMS suppresses only
    lower-scored boxes), so the scores at threshold 0 show where the gaps are."""
    post = postprocess(adapter)
    saved = post.score_thresh, post.detections_per_img
    post.score_thresh, post.detections_per_img = 0.0, 3 * KEEP
    try:
        per_image = [pytorch_detections(adapter, im)["scores"] for im in images]
    finally:
        post.score_thresh, post.detections_per_img = saved
    lowest_top = min(float(s.max()) for s in per_image)  # every image keeps a detection below it
    scores = torch.cat(per_image).sort(descending=True).values
    for i in range(KEEP, len(scores)):
        if scores[i - 1] < lowest_top and scores[i - 1] - scores[i] > 2e-4:
            return float(scores[i - 1] + scores[i]) / 2
    raise AssertionError(f"no gap in the top scores {scores.tolist()}")


def pytorch_detections(adapter: DetectorAdapter, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The student's detections as evaluation computes them (collate_batch + adapter.detect)."""
    batch = collate_batch([(image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 0})])
    with torch.no_grad():
        return adapter.detect(batch.images, batch.image_sizes, adapter.features(batch.images))[0]


def assert_same_detections(session, adapter: DetectorAdapter, images: list[torch.Tensor]) -> int:
    """onnxruntime's detections equal PyTorch's on every image, matched one to one (equal
    scores may come in another order); returns how many detections were compared."""
    total = 0
    for image in images:
        ref = pytorch_detections(adapter, image)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": image[None].numpy()})))
        boxes, scores, labels = (torch.from_numpy(got[k]) for k in ("boxes", "scores", "labels"))
        assert labels.dtype == torch.int64 and len(boxes) == len(ref["boxes"]), (len(boxes), len(ref["boxes"]))
        unmatched = list(range(len(ref["boxes"])))
        for i in range(len(boxes)):
            j = next((j for j in unmatched if labels[i] == ref["labels"][j]
                      and (boxes[i] - ref["boxes"][j]).abs().max() <= 1e-3
                      and abs(scores[i] - ref["scores"][j]) <= 1e-4), None)
            assert j is not None, f"ONNX detection {i} ({boxes[i].tolist()}, {scores[i]:.5f}, {labels[i]}) not in PyTorch's"
            unmatched.remove(j)
            if "masks" in ref:
                torch.testing.assert_close(torch.from_numpy(got["masks"][i]), ref["masks"][j], atol=1e-4, rtol=0)
        total += len(boxes)
    return total


def session_for(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def resized(images: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    return [F.interpolate(im[None], size=size, mode="bilinear", align_corners=False)[0] for im in images]


@pytest.mark.parametrize("family", ["fcos", "faster_rcnn", "mask_rcnn"])
def test_onnx_detections_equal_pytorch(tiny_config, tmp_path, family):
    cfg, adapter, images, names = trained(tiny_config, family)
    other = resized(images[:1], OTHER_SIZE)
    postprocess(adapter).score_thresh = thresh = pick_score_thresh(adapter, images + other)
    rule = ResizeRule(cfg.data.test_size, cfg.data.max_size, "test")
    onnx_path, sidecar = export_onnx(adapter, tmp_path / f"{family}.onnx", class_names=names, resize=rule, example_size=(64, 96))
    session = session_for(onnx_path)
    assert assert_same_detections(session, adapter, images) > 0
    assert assert_same_detections(session, adapter, other) > 0
    meta = json.loads(sidecar.read_text())
    assert meta["family"] == family and meta["class_names"] == names
    assert meta["score_thresh"] == pytest.approx(thresh)
    assert ("masks" in meta["outputs"]) == (family == "mask_rcnn")


@pytest.fixture
def retinanet_run(tiny_config, tmp_path) -> tuple[Path, DetectorAdapter, list[torch.Tensor]]:
    """A run directory as training leaves it for export: detector.pt + config.yaml."""
    cfg, adapter, images, names = trained(tiny_config, "retinanet")
    run = tmp_path / "run"
    save_checkpoint(run / "detector.pt", detector_file(adapter.model.state_dict(), cfg.to_dict()["model"], names))
    save_config(cfg, run / "config.yaml")
    return run, adapter, images


def test_cli_exports_a_run_to_onnx_and_torchvision(retinanet_run, tmp_path, capsys):
    run, adapter, images = retinanet_run
    other = resized(images[:1], OTHER_SIZE)
    postprocess(adapter).score_thresh = thresh = pick_score_thresh(adapter, images + other)
    out = tmp_path / "out" / "student.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--score-thresh", repr(thresh)]) == 0
    assert f"wrote {sidecar_path(out)}" in capsys.readouterr().out
    meta = json.loads(sidecar_path(out).read_text())
    # Resize rule from the run's config (test_size 64, max_size 128): a 4:3 trace at 64 x 85.
    assert (meta["resize"]["test_size"], meta["resize"]["max_size"]) == (64, 128)
    assert meta["resize"]["from"] == str(run / "config.yaml") and meta["input"]["traced_at"] == [64, 85]
    assert meta["class_names"] == ["circle", "square", "triangle", "cross"] and meta["score_thresh"] == thresh
    assert meta["outputs"]["labels"].startswith("int64")
    session = session_for(out)
    assert assert_same_detections(session, adapter, images) > 0  # shapes sizes vary; traced at 64 x 85
    assert assert_same_detections(session, adapter, other) > 0
    run_readme_example(out, images[0], tmp_path)
    # --format torchvision (the default) from the same run: the detector file, unchanged.
    copy = tmp_path / "copy.pt"
    assert main(["export", str(run), "--out", str(copy)]) == 0
    a, b = load_checkpoint(copy)["model"], load_checkpoint(run / "detector.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_readme_example(onnx_file: Path, image: torch.Tensor, tmp_path: Path) -> None:
    """The README's onnxruntime snippet on a file of ours: an image twice the test size on disk."""
    from PIL import Image

    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = text.split("<!-- onnx-example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    on_disk = F.interpolate(image[None], scale_factor=2, mode="bilinear")[0]
    Image.fromarray((on_disk.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(tmp_path / "image.png")
    code = (code.replace('"student.json"', repr(str(sidecar_path(onnx_file)))).replace('"student.onnx"', repr(str(onnx_file)))
            .replace('"image.jpg"', repr(str(tmp_path / "image.png"))))
    namespace: dict = {}
    exec(compile(code, "README.md onnx-example", "exec"), namespace)
    h, w = on_disk.shape[-2:]
    assert (namespace["H"], namespace["W"]) == ResizeRule(64, 128, "run").size_for(h, w)
    assert namespace["boxes"].shape == (len(namespace["labels"]), 4)
    assert all(0 <= label < 4 for label in namespace["labels"])


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["export", str(empty), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "without detector.pt or checkpoints/last.pt" in capsys.readouterr().err
    assert main(["export", str(empty), "--score-thresh", "0.3", "--out", str(tmp_path / "x.pt")]) == 2
    assert "--format onnx only" in capsys.readouterr().err
    # Without the optional ONNX packages: the install command, before anything is loaded.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["export", str(empty), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "pip install icdistill[export]" in capsys.readouterr().err


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if f not in FAMILIES and f != "condinst"])
def test_every_other_family_has_an_onnx_path(family):
    """The families not round-tripped above (faster_rcnn_c4 / _dc5, ...) have an ONNX path too;
    condinst has none (tests/test_condinst.py checks its ExportError)."""
    adapter = build_detector(family, backbone="resnet18", num_classes=2, fpn_channels=64)
    check_exportable(adapter)
    assert DeployedDetector(adapter).output_names[3:] == (["masks"] if family_facts(family).masks else [])


def test_a_family_without_an_onnx_path_is_a_clear_error():
    class OtherDetector(DetectorAdapter):  # a detection path that is neither dense nor RPN + RoI heads
        family = "other"

        def features(self, images):
            raise NotImplementedError

        def forward_train(self, images, image_sizes, features, targets, extras=()):
            raise NotImplementedError

        def detect(self, images, image_sizes, features):
            raise NotImplementedError

    with pytest.raises(ExportError, match="the other family cannot be exported to ONNX.*--format torchvision"):
        check_exportable(OtherDetector())


def test_read_source_takes_a_training_checkpoint(tmp_path, tiny_config):
    cfg = tiny_config()
    state = {"student.model.w": torch.ones(2), "method.x": torch.zeros(1)}
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(ckpt, {"format": "icdistill-train", "trainable": state, "config": cfg.to_dict(),
                           "model_config": cfg.to_dict()["model"], "class_names": ["a", "b"]})
    source = read_source(tmp_path / "run")  # a run directory without detector.pt: its last.pt
    assert source.path == ckpt and list(source.state) == ["w"] and source.class_names == ["a", "b"]
    assert (source.resize.test_size, source.resize.max_size) == (64, 128)
    assert source.resize.size_for(300, 400) == (64, 85)
