"""torchrun + DDP on CPU (gloo): gradients equal one process with the same global batch, and a
2-process `icdistill distill` run whose checkpoint resumes in a single process."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from icdistill.detectors import build_detector, freeze_as_teacher
from icdistill.distill.core.distiller import Distiller
from icdistill.distill.icd.module import ICDModule
from icdistill.distill.icd.sampling import PriorTensors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_models():
    """Student + ICD module and a teacher, deterministic (fake_ratio 0, jitter 0) so that one
    process and two can be compared exactly."""
    torch.manual_seed(0)
    kw = dict(backbone="resnet18", num_classes=3, fpn_channels=32, anchor_sizes=(16, 32, 64, 128, 256))
    teacher = freeze_as_teacher(build_detector("retinanet", **kw))
    student = build_detector("retinanet", **kw)
    prior = PriorTensors(*(torch.tensor(v) for v in ([1.0] * 3, [0.2] * 3, [0.05] * 3, [0.2] * 3, [0.05] * 3)))
    icd = ICDModule(num_classes=3, teacher_channels=32, student_channels=32, prior=prior, fake_ratio=0, jitter=0.0,
                    loss_weight=6.0)
    distiller = Distiller(student, icd, levels=student.level_names, strides=student.strides, warmup_iters=0).train()
    for m in distiller.modules():  # BN statistics are per process by nature; compare the rest
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return teacher, distiller


def make_batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 64, 64, generator=g)
    # every image has two boxes, so batch means split evenly over ranks
    targets = [{"boxes": torch.tensor([[4.0 + i, 4, 30, 28], [30, 20 + i, 60, 60]]), "labels": torch.tensor([i % 3, 2])}
               for i in range(4)]
    return images, [(64, 64)] * 4, targets


def grads_of(distiller, teacher, images, sizes, targets):
    losses = distiller(images, sizes, targets, teacher, iteration=5)
    sum(losses.values()).backward()


def _worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    teacher, distiller = make_models()
    model = DistributedDataParallel(distiller)
    images, sizes, targets = make_batch()
    half = slice(rank * 2, rank * 2 + 2)
    losses = model(images[half], sizes[half], targets[half], teacher, iteration=5)
    sum(losses.values()).backward()
    if rank == 0:
        torch.save({n: p.grad.clone() for n, p in distiller.named_parameters() if p.grad is not None}, out_path)
    dist.destroy_process_group()


def test_ddp_gradients_equal_a_single_process_with_the_same_global_batch(tmp_path):
    out = tmp_path / "ddp_grads.pt"
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    teacher, distiller = make_models()
    grads_of(distiller, teacher, *make_batch())
    single = {n: p.grad for n, p in distiller.named_parameters() if p.grad is not None}
    assert single.keys() == ddp.keys()
    assert any(n.startswith("method.") for n in single) and any(n.startswith("student.") for n in single)
    for name, grad in single.items():
        torch.testing.assert_close(ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_torchrun_distill_and_single_process_resume(tmp_path, tiny_overrides, empty_config, shapes_root):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this python")
    from icdistill.cli import main

    teacher_dir = tmp_path / "teacher"
    sets = [f"--set={s}" for s in tiny_overrides]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(teacher_dir), *sets]) == 0
    icd_sets = sets + [f"--set={s}" for s in (
        "distill.method=icd", "distill.icd.decoder_warmup_iters=2", "distill.warmup_iters=1",
        "teacher.family=retinanet", "teacher.backbone=resnet18", "teacher.fpn_channels=32",
        "teacher.anchor_sizes=[16, 32, 64, 128, 256]", f"teacher.weights={teacher_dir / 'detector.pt'}",
    )]
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "icdistill", "--no-progress",
           "distill", str(empty_config), "--out", str(run), *icd_sets]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and "bbox/AP" in metrics
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert last["world_size"] == 2 and last["iteration"] == 6
    assert not any(k.startswith("module.") for k in last["trainable"])

    # the snapshot at iteration 4 resumes in one process (another world size) and finishes
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "model_0000004.pt", resumed / "checkpoints" / "last.pt")
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(resumed), "--resume", *icd_sets]) == 0
    assert torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)["iteration"] == 6
