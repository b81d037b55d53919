"""ICD draws its fake instances and centre jitter from a generator of its own, seeded from
``solver.seed`` and saved with the module's state, so a distilled two-stage student sees its
baseline's RoI samples and a resumed run draws on exactly."""

from __future__ import annotations

import io

import torch

from distill_helpers import PRIOR, SIZES, TARGETS, tiny
from icdistill.config import distill_config, load_config
from icdistill.detectors import build_detector, freeze_as_teacher
from icdistill.distill.build import build_distiller
from icdistill.distill.icd.build import prior_tensors
from icdistill.distill.icd.module import ICDModule
from icdistill.engine.distributed import DistContext
from icdistill.engine.step import StepContext, build_optimisers, train_step
from icdistill.structures import collate_batch

def tiny_batch():
    g = torch.Generator().manual_seed(0)
    items = [(torch.rand(3, h, w, generator=g), {**t, "image_id": i}) for i, ((h, w), t) in enumerate(zip(SIZES, TARGETS))]
    return collate_batch(items)


def global_state_after_one_step(method: str, teacher) -> torch.Tensor:
    """The global CPU generator's state after one training step of a tiny Faster R-CNN student
    (``method`` none or icd), started from the same global state."""
    torch.manual_seed(0)
    student = tiny("faster_rcnn", 32)
    dcfg = distill_config(method=method, warmup_iters=0, icd={"hidden_dim": 32, "num_heads": 4})
    distiller, _ = build_distiller(dcfg, student, teacher if method != "none" else None, prior=PRIOR, seed=7)
    distiller.train()
    cfg = load_config(None, ["model.family=faster_rcnn", "solver.base_lr=0.01", "solver.warmup_iters=0",
                             "solver.max_iter=10", "solver.ims_per_batch=2"])
    cpu = torch.device("cpu")
    opts = build_optimisers(cfg, distiller, total_iters=10, device=cpu)
    step = StepContext(distiller, distiller, teacher if method != "none" else None, opts, DistContext(device=cpu))
    torch.manual_seed(1)
    _, losses = train_step(step, tiny_batch(), 0)
    if method == "icd":
        assert "distill/icd/feature" in losses  # ICD did run, fake instances included
    return torch.get_rng_state()


def test_icd_leaves_the_global_generator_to_a_two_stage_students_roi_sampling(monkeypatch):
    torch.manual_seed(0)
    teacher = freeze_as_teacher(tiny("faster_rcnn", 48))
    baseline = global_state_after_one_step("none", teacher)
    assert torch.equal(global_state_after_one_step("icd", teacher), baseline)
    # control: ICD drawing from the global generator (the former behaviour) breaks the pairing
    monkeypatch.setattr(ICDModule, "generator", lambda self: None)
    assert not torch.equal(global_state_after_one_step("icd", teacher), baseline)


def module(seed: int = 0) -> ICDModule:
    torch.manual_seed(0)
    return ICDModule(num_classes=3, teacher_channels=16, student_channels=8, prior=prior_tensors(PRIOR),
                     hidden_dim=32, num_heads=4, seed=seed)


def draw(icd: ICDModule):
    inst = icd.instances(TARGETS, SIZES)
    return inst.boxes, inst.centres, inst.labels


def test_the_generator_is_seeded_and_its_state_travels_with_the_module_state():
    first, same_seed, other_seed = module(seed=3), module(seed=3), module(seed=4)
    a = draw(first)
    assert all(torch.equal(x, y) for x, y in zip(a, draw(same_seed)))
    assert not all(torch.equal(x, y) for x, y in zip(a, draw(other_seed)))
    state = first.state_dict()  # after one draw: the resume point
    expected = draw(first)
    resumed = module(seed=3)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, draw(resumed)))
    # the state survives a save / load through a file read with weights_only
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    reloaded = module(seed=3)
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(torch.equal(x, y) for x, y in zip(expected, draw(reloaded)))


def test_a_checkpoint_without_the_generator_state_still_loads_strictly():
    old = {k: v for k, v in module(seed=3).state_dict().items() if not k.endswith("_extra_state")}
    icd = module(seed=3)
    icd.load_state_dict(old)  # strict: the missing state starts the generator from the seed
    assert all(torch.equal(x, y) for x, y in zip(draw(icd), draw(module(seed=3))))


def test_the_method_context_carries_solver_seed_to_the_generator():
    torch.manual_seed(0)
    teacher, student = freeze_as_teacher(tiny("retinanet", 48)), tiny("retinanet", 32)
    dcfg = distill_config(method="icd", icd={"hidden_dim": 32, "num_heads": 4})
    seeded = [build_distiller(dcfg, student, teacher, prior=PRIOR, seed=s)[0].method for s in (5, 5, 6)]
    assert [m.seed for m in seeded] == [5, 5, 6]
    assert all(torch.equal(x, y) for x, y in zip(draw(seeded[0]), draw(seeded[1])))


def test_the_students_global_stream_starts_the_same_with_or_without_teacher_and_method(monkeypatch, tiny_config):
    """Building the teacher and the method draws initial weights from the global generator;
    the run re-seeds it afterwards, so a distilled run's student starts from its baseline's
    stream (same RoI samples at the first step)."""
    from icdistill.data import build_datasets
    from icdistill.engine import setup

    def random_teacher(cfg, num_classes):  # a teacher whose build draws, as loading a real one does
        return freeze_as_teacher(build_detector("retinanet", backbone="resnet18", num_classes=num_classes,
                                                fpn_channels=48, anchor_sizes=(16, 32, 64, 128, 256)))

    monkeypatch.setattr(setup, "build_teacher", random_teacher)
    baseline = tiny_config("solver.seed=3")
    distilled = tiny_config("solver.seed=3", "distill.method=icd", "distill.icd.hidden_dim=32",
                            "distill.icd.num_heads=4")
    train_set, _ = build_datasets(baseline.data, with_masks=False, progress=False)
    states = []
    for cfg in (baseline, distilled):
        setup.seed_everything(cfg.solver.seed)
        distiller, _, _ = setup.build_models(cfg, train_set, fresh_start=True, main=False)
        assert (distiller.method is None) == (cfg is baseline)
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])
