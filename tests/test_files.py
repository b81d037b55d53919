"""The file formats of files.py: the detector file, older student.pt files, training checkpoints,
metrics.jsonl and metrics.json."""

import pytest
import torch

from icdistill.config import ModelConfig
from icdistill.detectors import build_detector, build_model
from icdistill.errors import DataError, ModelMismatchError
from icdistill.files import (
    DETECTOR_FORMAT,
    METRICS_FILE,
    METRICS_LOG,
    append_metrics_record,
    detector_file,
    detector_state_from_checkpoint,
    drop_metrics_after,
    load_checkpoint,
    read_json_object,
    read_metrics_jsonl,
    save_checkpoint,
    write_metrics_json,
)

MODEL = ModelConfig(family="retinanet", backbone="resnet18", fpn_channels=32, anchor_sizes=(16, 32, 64, 128, 256))


def tiny():
    torch.manual_seed(0)
    return build_detector("retinanet", backbone="resnet18", num_classes=3, fpn_channels=32,
                          anchor_sizes=(16, 32, 64, 128, 256))


def same_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("fmt, name", [(DETECTOR_FORMAT, "detector.pt"), ("icdistill-student", "student.pt")])
def test_detector_files_of_this_and_earlier_versions_load(tmp_path, fmt, name):
    source = tiny()
    content = detector_file(source.model.state_dict(), {"family": "retinanet", "backbone": "resnet18",
                                                        "fpn_channels": 32}, ["a", "b", "c"])
    assert content["torchvision_num_classes"] == 4 and content["class_names"] == ["a", "b", "c"]
    content["format"] = fmt
    save_checkpoint(tmp_path / name, content)
    loaded = build_model(ModelConfig(**{**MODEL.__dict__, "weights": str(tmp_path / name)}), 3)
    assert same_weights(loaded, source)


def test_a_training_checkpoint_yields_the_student_detector(tmp_path):
    source = tiny()
    trainable = {f"student.model.{k}": v for k, v in source.model.state_dict().items()}
    trainable["method.adapter.weight"] = torch.zeros(1)
    save_checkpoint(tmp_path / "last.pt", {"format": "icdistill-train", "trainable": trainable,
                                           "model_config": {"family": "retinanet"}})
    state = detector_state_from_checkpoint(load_checkpoint(tmp_path / "last.pt"), "last.pt")
    assert state.keys() == source.model.state_dict().keys()


def test_a_foreign_file_and_an_architecture_mismatch_are_named(tmp_path):
    with pytest.raises(ModelMismatchError, match="neither a detector file nor a training checkpoint"):
        detector_state_from_checkpoint({"something": 1}, "x.pt")
    source = tiny()
    save_checkpoint(tmp_path / "d.pt", detector_file(source.model.state_dict(),
                                                     {"family": "retinanet", "backbone": "resnet34"}, ["a", "b", "c"]))
    with pytest.raises(ModelMismatchError, match="set model.backbone: 'resnet34'"):
        build_model(ModelConfig(**{**MODEL.__dict__, "weights": str(tmp_path / "d.pt")}), 3)


def test_the_metrics_files_round_trip_strict_json_and_a_resume_drops_later_records(tmp_path):
    log = tmp_path / METRICS_LOG
    for step in range(1, 5):
        append_metrics_record(log, step, {"loss/total": 1.0 / step, "eval/bbox/APl": float("nan")})
    with log.open("a") as f:
        f.write('{"iter": 5, "loss/to')  # a last line cut off by a crash
    records = read_metrics_jsonl(log)
    assert [r["iter"] for r in records] == [1, 2, 3, 4] and records[0]["eval/bbox/APl"] is None
    drop_metrics_after(log, 2)
    assert read_metrics_jsonl(log) == records[:2]
    assert log.read_text().endswith("}\n")  # no torn line left to append after
    write_metrics_json(tmp_path / METRICS_FILE, {"bbox/AP": 12.5, "bbox/APl": float("nan")})
    assert "NaN" not in (tmp_path / METRICS_FILE).read_text()
    assert read_json_object(tmp_path / METRICS_FILE) == {"bbox/AP": 12.5, "bbox/APl": None}
    assert read_json_object(tmp_path / "absent.json") is None
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(DataError, match="list.json: expected a JSON object"):
        read_json_object(tmp_path / "list.json")
    with pytest.raises(DataError, match="absent.jsonl"):
        read_metrics_jsonl(tmp_path / "absent.jsonl")
