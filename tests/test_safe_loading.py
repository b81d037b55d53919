"""User-supplied weight and checkpoint files load weights-only: a file that would run code when
unpickled is refused with one line naming it and the opt-in; our own files of this and earlier
versions (numpy RNG state inside) and plain state dicts keep loading."""

import os
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from icdistill.cli import _overrides, build_parser, main
from icdistill.config import ModelConfig
from icdistill.detectors import build_detector, build_model
from icdistill.detectors.weights import load_checkpoint_file
from icdistill.errors import UnsafeFileError
from icdistill.files import (
    capture_rng_state,
    detector_file,
    find_resume_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

TINY = dict(family="retinanet", backbone="resnet18", fpn_channels=32, anchor_sizes=(16, 32, 64, 128, 256))


class WritesMarker:
    """Unpickling this runs ``os.system``: what a malicious ``.pth`` would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class Harmless:
    """An object of the user's own code: needs unpickling, runs nothing."""

    value: int = 3


def tiny_detector():
    torch.manual_seed(0)
    return build_detector("retinanet", backbone="resnet18", num_classes=3, fpn_channels=32,
                          anchor_sizes=(16, 32, 64, 128, 256))


def malicious_detector_file(tmp_path):
    """A detector file that looks right but runs ``touch <marker>`` when unpickled."""
    content = detector_file(tiny_detector().model.state_dict(), {"family": "retinanet"}, ["a", "b", "c"])
    content["payload"] = WritesMarker(tmp_path / "MARKER")
    path = tmp_path / "teacher.pth"
    torch.save(content, path)
    return path, tmp_path / "MARKER"


def test_a_file_that_would_run_code_is_refused_naming_it_and_the_opt_in(tmp_path):
    path, marker = malicious_detector_file(tmp_path)
    with pytest.raises(UnsafeFileError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "--allow-unsafe-pickle" in message
    assert "system" in message  # names what it would have run
    with pytest.raises(UnsafeFileError, match=r"teacher\.allow_unsafe_pickle: true"):
        build_model(ModelConfig(**TINY, weights=str(path)), 3, "teacher")
    with pytest.raises(UnsafeFileError, match=r"model\.allow_unsafe_pickle: true"):
        build_model(ModelConfig(**TINY, weights=str(path)), 3, "model")
    with pytest.raises(UnsafeFileError, match="plain state dict"):
        load_checkpoint_file(str(path))
    assert not marker.exists()


def test_cli_export_refuses_it_in_one_line(tmp_path, capsys):
    path, marker = malicious_detector_file(tmp_path)
    assert main(["export", str(path), "--out", str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "--allow-unsafe-pickle" in err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_resume_refuses_it_instead_of_skipping_it_as_corrupt(tmp_path):
    good = {"format": "icdistill-train", "trainable": {}, "iteration": 2}
    save_checkpoint(tmp_path / "model_0000002.pt", good)
    torch.save({**good, "iteration": 4, "payload": WritesMarker(tmp_path / "MARKER")}, tmp_path / "last.pt")
    with pytest.raises(UnsafeFileError, match="last.pt"):
        find_resume_checkpoint(tmp_path)
    assert not (tmp_path / "MARKER").exists()


def harmless_detector_file(tmp_path):
    """A detector file of a tiny RetinaNet that also holds a :class:`Harmless` object."""
    source = tiny_detector()
    content = detector_file(source.model.state_dict(), {"family": "retinanet", "backbone": "resnet18",
                                                        "fpn_channels": 32}, ["a", "b", "c"])
    content["note"] = Harmless()
    torch.save(content, tmp_path / "d.pt")
    return source


def test_the_opt_in_loads_a_file_that_needs_unpickling(tmp_path):
    source = harmless_detector_file(tmp_path)
    with pytest.raises(UnsafeFileError, match="Harmless"):
        load_checkpoint(tmp_path / "d.pt")
    assert load_checkpoint(tmp_path / "d.pt", allow_unsafe_pickle=True)["note"] == Harmless()
    loaded = build_model(ModelConfig(**TINY, weights=str(tmp_path / "d.pt"), allow_unsafe_pickle=True), 3)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 source.model.state_dict().values()))


def old_rng_state():
    """``capture_rng_state`` as earlier versions wrote it: numpy's state tuple with its ndarray."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def test_an_old_format_training_checkpoint_with_numpy_rng_state_still_loads_and_resumes(tmp_path):
    np.random.seed(7)
    state = {"format": "icdistill-train", "trainable": {"student.model.w": torch.ones(2)}, "iteration": 3,
             "rng": old_rng_state(), "config": {"model": {"family": "retinanet"}}}
    expected = np.random.rand(4)
    torch.save(state, tmp_path / "last.pt")  # as the previous save_checkpoint wrote it
    point = find_resume_checkpoint(tmp_path)
    assert point.state["iteration"] == 3 and isinstance(point.state["rng"]["numpy"][1], np.ndarray)
    np.random.seed(0)
    restore_rng_state(point.state["rng"])
    assert np.array_equal(np.random.rand(4), expected)


def test_new_checkpoints_hold_only_tensors_and_plain_data(tmp_path):
    np.random.seed(11)
    random.seed(11)
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng_state()})
    expected = (np.random.rand(3), random.random(), torch.rand(2))
    # Plain torch.load, no allowlist: nothing in the file needs one.
    rng = torch.load(tmp_path / "c.pt", weights_only=True)["rng"]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "c.pt") == []
    np.random.seed(0)
    random.seed(0)
    restore_rng_state(rng)
    got = (np.random.rand(3), random.random(), torch.rand(2))
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_a_torchvision_state_dict_loads(tmp_path):
    source = tiny_detector()
    torch.save(source.model.state_dict(), tmp_path / "sd.pth")
    state = load_checkpoint_file(str(tmp_path / "sd.pth"))
    assert state.keys() == source.model.state_dict().keys()


def test_the_cli_flag_is_the_opt_in(tmp_path):
    harmless_detector_file(tmp_path)
    assert main(["export", str(tmp_path / "d.pt"), "--out", str(tmp_path / "out.pt")]) == 2
    assert main(["export", str(tmp_path / "d.pt"), "--out", str(tmp_path / "out.pt"), "--allow-unsafe-pickle"]) == 0
    # the exported detector file is ours again: plain data, no opt-in needed
    assert load_checkpoint(tmp_path / "out.pt")["class_names"] == ["a", "b", "c"]
    for command in (["train", "c.yaml"], ["distill", "c.yaml"], ["eval", "c.yaml", "--weights", "d.pt"]):
        args = build_parser().parse_args([*command, "--set", "solver.max_iter=1", "--allow-unsafe-pickle"])
        assert _overrides(args) == ["solver.max_iter=1", "model.allow_unsafe_pickle=true",
                                    "teacher.allow_unsafe_pickle=true"]
        assert _overrides(build_parser().parse_args(command)) == []
