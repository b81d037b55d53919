"""Checkpoints, RNG state, optimisers and schedules."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from icdistill.engine import (
    build_method_optimizer,
    build_method_scheduler,
    build_student_optimizer,
    build_student_scheduler,
    clip_gradients,
    scale_lr,
    warmup_multistep_lambda,
)
from icdistill.files import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from icdistill.errors import DataError


def test_save_load_roundtrip(tmp_path):
    path = tmp_path / "sub" / "model_final.pth"
    state = {"model": {"w": torch.arange(3.0)}, "iter": 7, "cfg": {"lr": 0.02}}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["iter"] == 7 and loaded["cfg"] == {"lr": 0.02}
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["model_final.pth"]


def test_save_is_atomic_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"iter": 1})
    original = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"iter": 2})
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # temp file cleaned up
    monkeypatch.undo()
    assert load_checkpoint(path)["iter"] == 1


def test_load_missing_names_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(DataError, match="nope.pth"):
        load_checkpoint(missing)


def test_load_corrupt_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pth"):
        load_checkpoint(bad)


def test_rng_capture_restore(tmp_path):
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    # Through a checkpoint, as on resume.
    save_checkpoint(tmp_path / "c.pth", {"rng": state})
    random.random(), np.random.rand(), torch.rand(5)
    restore_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])


def test_warmup_multistep_values():
    f = warmup_multistep_lambda(max_iter=900, warmup_iters=100, warmup_factor=0.001)
    assert f(0) == pytest.approx(0.001)
    assert f(50) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(100) == pytest.approx(1.0)
    assert f(599) == pytest.approx(1.0)
    assert f(600) == pytest.approx(0.1)  # 2/3 of 900
    assert f(799) == pytest.approx(0.1)
    assert f(800) == pytest.approx(0.01)  # 8/9 of 900
    assert f(899) == pytest.approx(0.01)


def test_student_optimizer_and_scheduler():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                          nn.GroupNorm(2, 4), nn.Flatten(), nn.LayerNorm(4))
    model[2].weight.requires_grad_(False)  # frozen params are left out
    opt = build_student_optimizer(model, base_lr=0.02, weight_decay=1e-4, weight_decay_norm=0.0)
    assert isinstance(opt, torch.optim.SGD)
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    norm_ids = {id(p) for m in (model[1], model[3], model[5]) for p in m.parameters()}
    assert groups[0.0] == norm_ids
    assert groups[1e-4] == {id(model[0].weight), id(model[0].bias), id(model[2].bias)}
    assert opt.param_groups[0]["momentum"] == 0.9

    sched = build_student_scheduler(opt, max_iter=90, warmup_iters=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 * 0.001)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)


def test_icd_optimizer_cosine():
    module = nn.Linear(4, 4)
    opt = build_method_optimizer(module, lr=1e-4, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.AdamW)
    sched = build_method_scheduler(opt, max_iter=10)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[5] == pytest.approx(0.5e-4)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_scale_lr():
    assert scale_lr(0.02, 16) == pytest.approx(0.02)
    assert scale_lr(0.02, 4) == pytest.approx(0.005)


def test_clip_gradients():
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, -4.0, 0.5, 0.0])
    clip_gradients([p], value=1.0)
    assert torch.equal(p.grad, torch.tensor([1.0, -1.0, 0.5, 0.0]))

    q = nn.Parameter(torch.zeros(2))
    q.grad = torch.tensor([3.0, 4.0])
    total = clip_gradients((x for x in [q]), max_norm=0.01)
    assert total == pytest.approx(5.0)
    assert float(q.grad.norm()) == pytest.approx(0.01, rel=1e-4)
    assert clip_gradients([nn.Parameter(torch.zeros(1))], max_norm=1.0) == 0.0
    assert math.isfinite(total)
