"""Each picture and the training curves write a real PNG."""

from __future__ import annotations

import json

import pytest
import torch

from icdistill.errors import DataError
from icdistill.reporting.curves import save_training_curves
from icdistill.reporting.pictures import save_attention_overlays, save_detections

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024


def test_attention_overlays(tmp_path):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 60, 80, generator=g)
    boxes = torch.tensor([[5.0, 5.0, 30.0, 40.0], [40.0, 10.0, 75.0, 55.0], [0, 0, 10, 10]])
    maps = [torch.rand(8, 10, generator=g), torch.rand(60, 80, generator=g),
            torch.zeros(4, 5)]  # feature-grid, image-grid and constant maps
    out = save_attention_overlays(tmp_path / "att.png", image, boxes, ["cat", "dog", "cat"],
                                  maps, title="ICD attention")
    assert_png(out)
    # No instances: only the "all instances" panel.
    out = save_attention_overlays(tmp_path / "none.png", image, torch.zeros(0, 4), None, [])
    assert_png(out)
    with pytest.raises(ValueError):
        save_attention_overlays(tmp_path / "x.png", image, boxes, None, maps[:1])


def test_detections(tmp_path):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 64, 96, generator=g)
    boxes = torch.tensor([[2.0, 3.0, 40.0, 50.0], [50.0, 10.0, 90.0, 60.0], [1, 1, 5, 5]])
    out = save_detections(tmp_path / "det.png", image, boxes, torch.tensor([0, 2, 1]),
                          torch.tensor([0.9, 0.5, 0.1]), ["a", "b", "c"])
    assert_png(out)


def test_training_curves(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"iter": i, "loss/total": 2.0 / (i + 1), "det/classification": 1.0 / (i + 1),
                         "distill/icd/idf": 0.5, "distill/icd/feature": 0.1 * i, "lr": 0.01}) for i in range(20)]
    lines.append(json.dumps({"bbox/AP": 30.0}))  # eval record without iter
    jsonl.write_text("\n".join(lines) + '\n{"iter": 20, "loss/to')  # cut-off last line
    assert_png(save_training_curves(tmp_path / "curves.png", jsonl))
    assert_png(save_training_curves(tmp_path / "one.png", jsonl, keys=["loss/total"]))
    with pytest.raises(DataError, match="missing.jsonl"):
        save_training_curves(tmp_path / "x.png", tmp_path / "missing.jsonl")
