"""Shared fixtures: a tiny shapes dataset and tiny configs, so end-to-end tests run in seconds."""

from pathlib import Path

import pytest

from icdistill.config import load_config


TINY_MODEL = [
    "model.family=retinanet",
    "model.backbone=resnet18",
    "model.fpn_channels=32",
    "model.anchor_sizes=[16, 32, 64, 128, 256]",
]


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="session")
def tiny_overrides(shapes_root) -> list[str]:
    """--set values for a few-iteration run on 12 tiny images."""
    return [
        "data.format=shapes",
        f"data.shapes.root={shapes_root}",
        "data.shapes.num_train=12",
        "data.shapes.num_test=6",
        "data.shapes.image_height=64",
        "data.shapes.image_width=96",
        "data.min_sizes=[64]",
        "data.max_size=128",
        "data.test_size=64",
        *TINY_MODEL,
        "solver.max_iter=4",
        "solver.ims_per_batch=2",
        "solver.base_lr=0.01",
        "solver.warmup_iters=2",
        "solver.checkpoint_period=2",
        "solver.log_period=1",
        "eval.batch_size=3",
        "eval.viz_images=2",
        # The tests distil from teachers trained for 4 iterations (AP ~ 0), which the teacher
        # check would rightly stop; tests/test_teacher_check.py turns it back on.
        "distill.check_teacher=false",
        # Plots and report.html cost seconds per run; the tests that look at them turn them on.
        "eval.report=false",
    ]


@pytest.fixture(scope="session")
def tiny_config(tiny_overrides):
    def make(*extra: str):
        return load_config(None, [*tiny_overrides, *extra])

    return make


@pytest.fixture(scope="session")
def empty_config(tmp_path_factory) -> Path:
    """A config file with no keys: tests give everything with --set."""
    path = tmp_path_factory.mktemp("cfg") / "empty.yaml"
    path.write_text("{}\n")
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_overrides, empty_config) -> Path:
    """``detector.pt`` of a tiny RetinaNet trained once per session with ``tiny_overrides``
    (the teacher of the distillation CLI tests: give it with ``teacher.*`` = TINY_MODEL)."""
    from icdistill.cli import main

    out = tmp_path_factory.mktemp("tiny_teacher")
    assert main(["--no-progress", "train", str(empty_config), "--out", str(out),
                 *[f"--set={s}" for s in tiny_overrides]]) == 0
    return out / "detector.pt"


@pytest.fixture(autouse=True, scope="session")
def _image_check_cache(tmp_path_factory):
    """The image check's cache (icdistill.data.image_check) in a folder of the test session,
    not the user's cache folder; session-scoped so that session fixtures (tiny_teacher's run)
    use it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ICDISTILL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        yield
