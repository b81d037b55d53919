"""Crash-safe runs: a real `python -m icdistill train` process killed with SIGKILL (mid-run, and
in the middle of a checkpoint write) resumes with --resume to the very result of an uninterrupted
run; a truncated last.pt falls back to the newest valid snapshot; a full or read-only output
folder is a clear error that leaves the last good checkpoint intact; snapshot retention."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from icdistill.cli import main
from icdistill.config import load_config
from icdistill.errors import ConfigError, DataError, OutputError
from icdistill.files import (
    PAUSE_IN_SAVE_ENV,
    append_line,
    find_resume_checkpoint,
    load_checkpoint,
    prune_snapshots,
    save_checkpoint,
    write_bytes_atomic,
    write_text_atomic,
)

# 6 iterations, a checkpoint every 2, one periodic snapshot kept; no pictures (not what is tested).
RUN_SETS = ["solver.max_iter=6", "solver.checkpoint_period=2", "solver.keep_checkpoints=1",
            "solver.device=cpu", "eval.viz_images=0"]


def cli_sets(tiny_overrides) -> list[str]:
    return [f"--set={s}" for s in [*tiny_overrides, *RUN_SETS]]


def train_in_process(out: Path, tiny_overrides, empty_config, *, resume: bool = False) -> int:
    return main(["--no-progress", "train", str(empty_config), "--out", str(out), *cli_sets(tiny_overrides),
                 *(["--resume"] if resume else [])])


def start_training(out: Path, tiny_overrides, empty_config, **env: str) -> subprocess.Popen:
    """`python -m icdistill train` in its own process, with this process's thread count (the
    same arithmetic as the in-process runs it is compared with)."""
    environ = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "icdistill", "--no-progress", "train", str(empty_config), "--out", str(out),
         *cli_sets(tiny_overrides)],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 180.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled); fail if it exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the training process exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def logged_iterations(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line)["iter"])
    return out


def results(run: Path) -> tuple[dict, list[dict], dict]:
    """Final metrics without the clocks, every logged step, and the final detector weights."""
    metrics = {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if not k.startswith("time/")}
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return metrics, log, load_checkpoint(run / "detector.pt")["model"]


def assert_same_results(run: Path, reference: Path) -> None:
    metrics, log, weights = results(run)
    ref_metrics, ref_log, ref_weights = results(reference)
    assert metrics == ref_metrics
    assert log == ref_log  # the same losses at every step, each step once
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_overrides, empty_config) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    assert train_in_process(out, tiny_overrides, empty_config) == 0
    return out


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(reference, tmp_path, tiny_overrides,
                                                                    empty_config, capsys):
    run = tmp_path / "run"
    proc = start_training(run, tiny_overrides, empty_config)
    kill_when(proc, lambda: 3 in logged_iterations(run), "iteration 3 was logged")
    assert not (run / "metrics.json").exists()  # really killed mid-run
    assert train_in_process(run, tiny_overrides, empty_config, resume=True) == 0
    assert "resumed from" in capsys.readouterr().out
    assert_same_results(run, reference)


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(reference, tmp_path, tiny_overrides,
                                                                  empty_config, capsys):
    """The test hook pauses the write of last.pt at iteration 4 between the complete temp file
    and the rename; killed there, last.pt still holds iteration 2."""
    run, marker = tmp_path / "run", tmp_path / "paused"
    proc = start_training(run, tiny_overrides, empty_config, **{PAUSE_IN_SAVE_ENV: str(marker)})
    kill_when(proc, marker.exists, "the paused checkpoint write")
    checkpoints = run / "checkpoints"
    temp = Path(marker.read_text())
    assert temp.parent == checkpoints and temp.name.startswith(".last.pt.") and temp.is_file()
    assert load_checkpoint(checkpoints / "last.pt")["iteration"] == 2
    assert train_in_process(run, tiny_overrides, empty_config, resume=True) == 0
    assert "resumed from" in capsys.readouterr().out
    assert not temp.exists()  # the killed write's temp file is cleaned up on resume
    assert_same_results(run, reference)


def test_retention_keeps_last_pt_and_the_newest_snapshots(reference, tmp_path):
    # the reference run (6 iterations, snapshots at 2 and 4, keep_checkpoints 1)
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["last.pt", "model_0000004.pt"]
    for it in (10, 2, 30, 4):
        save_checkpoint(tmp_path / f"model_{it:07d}.pt", {"iteration": it})
    save_checkpoint(tmp_path / "last.pt", {"iteration": 31})
    assert prune_snapshots(tmp_path, None) == []  # null keeps all
    removed = prune_snapshots(tmp_path, 2)
    assert [p.name for p in removed] == ["model_0000002.pt", "model_0000004.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model_0000010.pt", "model_0000030.pt"]
    assert load_config(None, []).solver.keep_checkpoints == 3
    with pytest.raises(ConfigError, match="solver.keep_checkpoints"):
        load_config(None, ["solver.keep_checkpoints=0"])


def test_a_truncated_last_pt_falls_back_to_the_newest_valid_snapshot(reference, tmp_path, tiny_overrides,
                                                                     empty_config, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    snapshot = reference / "checkpoints" / "model_0000004.pt"
    (run / "checkpoints" / snapshot.name).write_bytes(snapshot.read_bytes())
    whole = (reference / "checkpoints" / "last.pt").read_bytes()
    (run / "checkpoints" / "last.pt").write_bytes(whole[: len(whole) // 2])
    assert train_in_process(run, tiny_overrides, empty_config, resume=True) == 0
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("warning: not a valid training checkpoint"))
    assert str(run / "checkpoints" / "last.pt") in warning and str(run / "checkpoints" / snapshot.name) in warning
    metrics, _, weights = results(run)
    ref_metrics, _, ref_weights = results(reference)
    assert metrics == ref_metrics and all(torch.equal(weights[k], ref_weights[k]) for k in weights)


def test_no_valid_checkpoint_is_a_clear_error_naming_each_file(tmp_path, tiny_overrides, empty_config, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.pt").write_bytes(b"\x00" * 100)
    save_checkpoint(checkpoints / "model_0000002.pt", {"format": "something else"})
    with pytest.raises(DataError, match="no valid training checkpoint") as info:
        find_resume_checkpoint(checkpoints)
    assert "last.pt: truncated or corrupt" in str(info.value) and "model_0000002.pt: format" in str(info.value)
    assert train_in_process(tmp_path / "run", tiny_overrides, empty_config, resume=True) == 2
    assert "no valid training checkpoint" in capsys.readouterr().err


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real size-limited folder (a tmpfs mount); skips where mounting is impossible."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (unprivileged container?): {done.stderr.strip()}")
    try:
        yield path
    finally:
        # lazily where a file is still open in it (a failed run's TensorBoard writer)
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], check=True)


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_full_disk_is_an_error_naming_the_file_and_keeps_the_previous_one(tmp_path):
    with tmpfs(tmp_path / "small", "1m") as folder:
        save_checkpoint(folder / "last.pt", {"iteration": 1})
        with pytest.raises(OutputError, match=r"cannot write .*last\.pt: no space left on the device \(ENOSPC\)"
                                              r"; the previous .*last\.pt is intact"):
            save_checkpoint(folder / "last.pt", {"iteration": 2, "big": torch.zeros(1 << 19)})
        assert load_checkpoint(folder / "last.pt")["iteration"] == 1
        assert only_files(folder) == ["last.pt"]  # the temp file is gone
        # the step log, appended every log_period, on the same full disk
        with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
            while True:
                f.write(b"\0" * 65536)
        with pytest.raises(OutputError, match=r"cannot write .*metrics\.jsonl: no space left on the device"):
            append_line(folder / "metrics.jsonl", json.dumps({"iter": 1, "loss/total": 1.0} | {f"k{i}": i for i in range(999)}))


def test_a_training_run_on_a_full_disk_stops_with_the_path_and_keeps_last_pt(reference, tmp_path,
                                                                              tiny_overrides, empty_config, capsys):
    """Room for one training checkpoint: last.pt at iteration 2 fits, its snapshot does not."""
    size = (reference / "checkpoints" / "last.pt").stat().st_size * 3 // 2
    with tmpfs(tmp_path / "small", str(size)) as folder:
        assert train_in_process(folder / "run", tiny_overrides, empty_config) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "model_0000002.pt: no space left on the device (ENOSPC)" in err
        assert f"the last good checkpoint {folder / 'run' / 'checkpoints' / 'last.pt'} is kept" in err
        assert only_files(folder / "run" / "checkpoints") == ["last.pt"]
        assert load_checkpoint(folder / "run" / "checkpoints" / "last.pt")["iteration"] == 2


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` made read-only for real: a tmpfs remounted read-only under root (which ignores
    file modes), file modes otherwise."""
    if os.geteuid() == 0:
        with tmpfs(path, "4m"):
            save_checkpoint(path / "last.pt", {"iteration": 1})
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
            try:
                yield "EROFS"
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(path)], check=True)
        return
    save_checkpoint(path / "last.pt", {"iteration": 1})
    path.chmod(0o555)
    try:
        yield "EACCES"
    finally:
        path.chmod(0o755)


def test_a_read_only_folder_is_an_error_naming_the_path(tmp_path, tiny_overrides, empty_config, capsys):
    folder = tmp_path / "ro"
    with read_only(folder) as code:
        with pytest.raises(OutputError, match=rf"cannot write .*last\.pt: .*\({code}\); the previous .*intact"):
            save_checkpoint(folder / "last.pt", {"iteration": 2})
        assert load_checkpoint(folder / "last.pt")["iteration"] == 1
        # every other run file (report.html, pictures) goes through the same atomic writer
        with pytest.raises(OutputError, match=rf"cannot write .*report\.html: .*\({code}\); no partial report\.html"):
            write_text_atomic(folder / "report.html", "<html></html>")
        with pytest.raises(OutputError, match=rf"cannot write .*curves\.png: .*\({code}\)"):
            write_bytes_atomic(folder / "curves.png", b"\x89PNG")
        assert train_in_process(folder / "run", tiny_overrides, empty_config) == 2
        err = capsys.readouterr().err
        assert f"cannot write into the output folder {folder / 'run' / 'checkpoints'}: " in err and f"({code})" in err
        assert only_files(folder) == ["last.pt"]
