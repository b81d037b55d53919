"""The Python API (icdistill/api.py): the README's example runs as written (on tiny data), the
config forms it accepts, `import icdistill` stays light, and the CLI goes through it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import icdistill
from icdistill import api
from icdistill.cli import main
from icdistill.config import Config, load_config
from icdistill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# What shrinks the demo recipes to a few seconds: the tiny shapes and models of conftest.py, a
# teacher section matching the tiny teacher, short warm-ups; the teacher check stays on (with
# no threshold: a 4-iteration teacher scores ~0 AP) so the example's teacher numbers exist.
TINY_DEMO = ["teacher.family=retinanet", "teacher.backbone=resnet18", "teacher.fpn_channels=32",
             "teacher.anchor_sizes=[16, 32, 64, 128, 256]", "distill.icd.decoder_warmup_iters=2",
             "distill.warmup_iters=1", "distill.check_teacher=true", "distill.check_teacher_min_ap=0",
             "eval.viz_images=0", "solver.max_iter=2", "solver.checkpoint_period=1000"]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- python-api-example[^>]*-->\n```python\n(.*?)```", text, flags=re.S)
    assert match, "README.md: the Python API example block is missing"
    return match.group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch, tiny_overrides, capsys):
    """The README's block, executed as it is; only the three calls get the tiny settings added
    (after the example's own overrides) and run in a scratch folder."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    tiny = [*tiny_overrides, *TINY_DEMO]

    def shrunk(fn):
        def call(config, *args, overrides=(), **kwargs):
            return fn(api.resolve_config(api.resolve_config(config, overrides), tiny), *args, **kwargs)
        return call

    for name in ("train", "distill", "evaluate"):
        monkeypatch.setattr(api, name, shrunk(getattr(api, name)))
    namespace: dict = {}
    exec(compile(readme_example(), "README.md (Python API)", "exec"), namespace)

    teacher, student, again = namespace["teacher"], namespace["student"], namespace["again"]
    assert teacher.detector_file == Path("runs/teacher/detector.pt") and teacher.detector_file.is_file()
    assert student.out_dir == Path("runs/icd") and student.metrics_file == Path("runs/icd/metrics.json")
    assert student.config.distill.method == "icd"  # distill() picks the toolkit's method
    assert str(student.config.teacher.weights) == str(teacher.detector_file)
    assert "teacher/bbox/AP" in student.metrics and "icd/idf_auroc" in student.metrics
    assert again.metrics["bbox/AP"] == student.metrics["bbox/AP"]  # the same detector, test set, evaluator
    assert again.metrics_file is None and again.out_dir is None
    assert again.detector_file == student.detector_file
    printed = capsys.readouterr().out
    assert "Result(out_dir='runs/icd', bbox/AP=" in printed and "teacher/bbox/AP=" in printed


def test_import_is_light_and_the_names_resolve():
    code = ("import sys, icdistill; assert 'torch' not in sys.modules, 'import icdistill loaded torch'; "
            "icdistill.train, icdistill.evaluate, icdistill.Result; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    import icdistill.distill.build  # noqa: F401  the subpackage of the same name, imported in any order

    assert callable(icdistill.distill) and icdistill.distill.build.build_distiller
    assert icdistill.train is api.train and icdistill.evaluate is api.evaluate
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        icdistill.nope


def test_configs_come_as_paths_dicts_or_config_objects(empty_config, tmp_path):
    sets = ["solver.max_iter=7", "data.min_sizes=[100, 120]"]
    from_path = api.resolve_config(empty_config, sets)
    assert from_path == load_config(empty_config, sets)
    assert api.resolve_config({"solver": {"max_iter": 7}}, {"data.min_sizes": [100, 120]}) == from_path
    assert api.resolve_config(Config(), {"solver": {"max_iter": 7}, "data": {"min_sizes": (100, 120)}}) == from_path
    assert api.resolve_config(from_path) == from_path and api.resolve_config(str(empty_config), "solver.max_iter=7")
    weights = tmp_path / "t.pt"  # a Path value becomes its string
    assert api.resolve_config(empty_config, {"teacher.weights": weights}).teacher.weights == str(weights)
    with pytest.raises(ConfigError, match="unknown config key 'solver.max_iters'"):
        api.resolve_config({}, {"solver.max_iters": 3})
    with pytest.raises(ConfigError, match="a YAML path, a dict or a Config"):
        api.resolve_config(42)
    with pytest.raises(ConfigError, match="'key=value' strings or a dict"):
        api.resolve_config({}, [("solver.max_iter", 3)])
    assert api.default_out_dir("configs/demo/icd.yaml") == Path("runs/icd")
    with pytest.raises(ConfigError, match="out: a run directory is required"):
        api.default_out_dir({})


def test_the_cli_calls_the_api(monkeypatch, empty_config, tmp_path, capsys):
    calls = []

    def fake(name):
        def run(config, out=None, overrides=(), **kwargs):
            calls.append((name, config, out, list(overrides), kwargs))
            return api.Result({"bbox/AP": 12.5, "teacher/bbox/AP": 20.0, "teacher/images": 5}, Path(out),
                              Path(out) / "metrics.json", None, Config())
        return run

    for name in ("train", "distill"):
        monkeypatch.setattr(api, name, fake(name))
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(tmp_path), "--set", "solver.max_iter=3"]) == 0
    assert calls == [("distill", str(empty_config), tmp_path, ["solver.max_iter=3"],
                      {"resume": False, "progress": False})]
    printed = capsys.readouterr().out
    assert "AP 12.50" in printed and "teacher on 5 test images: AP 20.00" in printed
    assert main(["--no-progress", "train", str(empty_config), "--resume"]) == 0
    assert calls[-1][0] == "train" and calls[-1][2] == Path("runs") / "empty" and calls[-1][4]["resume"]
    assert main(["--no-progress", "eval", str(empty_config), "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "--weights: file not found" in capsys.readouterr().err
