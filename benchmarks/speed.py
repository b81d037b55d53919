"""What distillation costs: per-iteration time (and GPU memory) of five kinds of training step.

    python benchmarks/speed.py [--json speed.json] [--iters 10] [--no-results]

Steps, all on the same batch and the same models (the demo's recipe: FCOS, MobileNetV3-Large
teacher, MobileNetV2 student, 8 shapes images of ~128x176), each the trainer's own
``icdistill.engine.step.train_step`` on what the toolkit's builders make of the recipe:
  (a) student      the student's training step alone
  (b) +teacher     (a) plus the frozen teacher's backbone + FPN forward
  (c) icd          a full ICD distillation step: (b) plus the ICD module, its losses and AdamW
  (d) fitnet       (b) plus FitNet's full-map imitation of the same levels
  (e) decoder      a decoder warm-up step (teacher forward + ICD module, no student)
icd_overhead_ratio = (c) / (b). Every method of the slot (METHOD_ROWS) is also timed, with the
peak memory of one step, on the demo's FCOS pair and a Faster R-CNN FPN pair (METHOD_PAIRS).

Then the memory of ICD's distillation weights (real instances only, accumulated in chunks of
queries) against a straightforward all-query implementation (B·H·K·S logits), measured as the
peak memory PyTorch's allocator holds while computing each (torch.profiler), on the same inputs: p2-p6 of two
800x1333 images (padded 800x1344, S = 89,523 tokens) with 100 queries per image. On a GPU the
COCO-size steps of Faster R-CNN and RetinaNet R-101 -> R-50 are timed too. Steps (a)-(c) are also
timed at demo size for the families of FAMILY_ROWS (Faster R-CNN FPN, C4, DC5, Cascade R-CNN,
CondInst).

Results go to --json and, unless --no-results, into docs/RESULTS.md between the
"speed benchmark" markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Sequence

import torch

from icdistill.config import Config, load_config
from icdistill.data import build_datasets, build_train_loader, compute_prior
from icdistill.demo import demo_config_path
from icdistill.detectors import build_detector, family_facts, freeze_as_teacher
from icdistill.distill.build import build_distiller
from icdistill.distill.core.registry import method_names
from icdistill.distill.icd.build import prior_tensors
from icdistill.distill.icd.module import ICDModule
from icdistill.engine.distributed import DistContext
from icdistill.engine.step import StepContext, build_optimisers, train_step
from icdistill.errors import ConfigError
from icdistill.structures import collate_batch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "RESULTS.md"
BEGIN, END = "<!-- speed benchmark: begin -->", "<!-- speed benchmark: end -->"


def demo_setup(data_root: Path, extra: Sequence[str] = ()):
    """The demo ICD recipe's config (+ ``extra`` overrides), teacher, student, training prior and
    one batch of 8 real shapes images."""
    cfg = load_config(demo_config_path("icd"), [f"data.shapes.root={data_root}", "data.validate_images=false", *extra])
    train_set, _ = build_datasets(cfg.data, with_masks=False, progress=False)
    batch = next(iter(build_train_loader(train_set, batch_size=cfg.solver.ims_per_batch, seed=0)))

    def detector(model_cfg):
        return build_detector(model_cfg.family, backbone=model_cfg.backbone, num_classes=train_set.num_classes,
                              fpn_channels=model_cfg.fpn_channels)
    torch.manual_seed(0)
    teacher = freeze_as_teacher(detector(cfg.teacher))
    student = detector(cfg.model)
    return cfg, teacher, student, compute_prior(train_set), batch


# Families timed at demo size beside the demo's FCOS (a ResNet-34 teacher -> ResNet-18 student:
# the FPN-free variants need ResNets), with fewer sampled RoIs than torchvision's 512 so a CPU
# smoke run stays short (C4 runs res5 on every RoI). CondInst's batch carries the instance masks.
FAMILY_ROWS = ("faster_rcnn", "faster_rcnn_c4", "faster_rcnn_dc5", "cascade_rcnn", "condinst")
FAMILY_ROW_STEPS = ("a_student", "b_student_teacher", "c_icd")
FAMILY_ROW_ROIS = 64


def family_setup(family: str, data_root: Path, extra: Sequence[str] = ()):
    """The demo ICD recipe with a ``family`` ResNet-34 teacher and ResNet-18 student (the recipe's
    FPN width where there is an FPN), ``FAMILY_ROW_ROIS`` sampled RoIs per image; its prior and
    one batch of 8 shapes images."""
    sets = [f"data.shapes.root={data_root}", "data.validate_images=false", f"model.family={family}",
            f"teacher.family={family}", "model.backbone=resnet18", "teacher.backbone=resnet34", *extra]
    cfg = load_config(demo_config_path("icd"), sets)
    facts = family_facts(family)
    train_set, _ = build_datasets(cfg.data, with_masks=facts.masks, progress=False)
    batch = next(iter(build_train_loader(train_set, batch_size=cfg.solver.ims_per_batch, seed=0)))
    rois = FAMILY_ROW_ROIS if facts.two_stage else None  # one-stage families have no RoI sampler

    def detector(model_cfg):
        return build_detector(model_cfg.family, backbone=model_cfg.backbone, num_classes=train_set.num_classes,
                              fpn_channels=model_cfg.fpn_channels, box_batch_size_per_image=rois)
    torch.manual_seed(0)
    teacher = freeze_as_teacher(detector(cfg.teacher))
    return cfg, teacher, detector(cfg.model), compute_prior(train_set), batch


def time_families(data_root: Path, iters: int, device: torch.device) -> dict[str, dict]:
    """``FAMILY_ROW_STEPS`` of each family of ``FAMILY_ROWS`` at demo size, with its ICD overhead."""
    out = {}
    for family in FAMILY_ROWS:
        fns, _ = step_functions(*family_setup(family, data_root), device)
        timed = {name: time_step(fns[name], iters, device) for name in FAMILY_ROW_STEPS}
        timed["icd_overhead_ratio"] = timed["c_icd"]["s_per_iter"] / timed["b_student_teacher"]["s_per_iter"]
        out[family] = timed
        print(family, {k: round(v["s_per_iter"] if isinstance(v, dict) else v, 3) for k, v in timed.items()})
    return out


def families_table(result: dict) -> str:
    if "demo_families" not in result:
        return ""
    lines = ["", f"Families at demo size (ResNet-34 teacher -> ResNet-18 student, the same 8 images, "
             f"{FAMILY_ROW_ROIS} sampled RoIs per image; seconds per iteration):", "",
             "| family | student | +teacher | icd | icd_overhead_ratio |", "|---|---:|---:|---:|---:|"]
    for family, t in result["demo_families"].items():
        lines.append(f"| {family} | {t['a_student']['s_per_iter']:.3f} | {t['b_student_teacher']['s_per_iter']:.3f} "
                     f"| {t['c_icd']['s_per_iter']:.3f} | {t['icd_overhead_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def time_step(step, iters: int, device: torch.device) -> dict[str, float]:
    for _ in range(2):  # warm-up: allocator, oneDNN/cuDNN kernel choice
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    out = {"s_per_iter": statistics.median(times), "s_per_iter_min": min(times)}
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class UniformPrior:
    """A stand-in dataset prior for random COCO-size data (speed does not depend on it)."""

    def __init__(self, num_classes: int) -> None:
        self.freq = [1.0] * num_classes
        self.w_mean = self.w_std = self.h_mean = self.h_std = [0.1] * num_classes


def coco_setup(family: str, size: tuple[int, int], num_classes: int = 80):
    """The default (paper) config of ``family``, an R-101 teacher -> R-50 student (FPN 256), and a
    batch of 2 random images of ``size`` with 10 random boxes each (speed does not depend on
    pixels)."""
    cfg = load_config(None, [f"model.family={family}", f"teacher.family={family}"])
    torch.manual_seed(0)
    teacher = freeze_as_teacher(build_detector(family, backbone="resnet101", num_classes=num_classes))
    student = build_detector(family, backbone="resnet50", num_classes=num_classes)
    h, w = size
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(2):
        xy = torch.rand(10, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(10, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        items.append((torch.rand(3, h, w, generator=g), {"boxes": torch.cat([xy, xy + wh], 1),
                      "labels": torch.randint(0, num_classes, (10,), generator=g), "image_id": i}))
    return cfg, teacher, student, UniformPrior(num_classes), collate_batch(items)


def dense_batch(batch, boxes_per_image: int = 13, seed: int = 0):
    """The same images with ``boxes_per_image`` random boxes each: BCCD's density (~13
    instances, ~78 ICD queries per image) instead of the shapes data's few."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for (h, w), t in zip(batch.image_sizes, batch.targets):
        xy = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = 8 + torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([w * 0.2, h * 0.2])
        boxes = torch.minimum(torch.cat([xy, xy + wh], 1), torch.tensor([w, h, w, h], dtype=torch.float32))
        num_classes = int(t["labels"].max()) + 1 if len(t["labels"]) else 1
        targets.append({**t, "boxes": boxes, "labels": torch.randint(0, max(num_classes, 1), (boxes_per_image,), generator=g)})
    return dataclasses.replace(batch, targets=targets)


def step_context(cfg: Config, method: str, teacher, student, prior, ctx: DistContext) -> StepContext:
    """The trainer's step context for ``student`` + ``method`` (main stage: no warm-ups); the
    ICD recipe's λ for ICD, each other method's default weight and options."""
    dcfg = dataclasses.replace(cfg.distill, method=method, warmup_iters=0,
                               icd=dataclasses.replace(cfg.distill.icd, decoder_warmup_iters=0))
    distiller = build_distiller(dcfg, student, teacher, prior=prior)[0].to(ctx.device).train()
    opts = build_optimisers(cfg, distiller, total_iters=10**9, device=ctx.device)
    return StepContext(distiller, distiller, teacher, opts, ctx, student_clip_value=cfg.solver.grad_clip_value,
                       clip_plain_runs=cfg.solver.grad_clip_runs == "all")


def step_functions(cfg: Config, teacher, student, prior, batch, device):
    """The five steps as closures over one batch, each the trainer's own ``train_step`` on a
    trainable whole built by the toolkit's builders from ``cfg`` (main stage, past warm-ups)."""
    teacher.to(device)
    batch = batch.to(device)
    ctx = DistContext(device=device)
    contexts = {method: step_context(cfg, method, teacher, student, prior, ctx) for method in ("none", "icd", "fitnet")}
    icd = contexts["icd"].distiller.method
    main_stage = 10**6

    def with_teacher_forward():
        teacher.features(batch.images)
        train_step(contexts["none"], batch, main_stage)

    def decoder_warmup():
        icd.method_only_iters = 1  # iteration 0 lies in the decoder warm-up stage
        try:
            train_step(contexts["icd"], batch, 0)
        finally:
            icd.method_only_iters = 0

    dense = dense_batch(batch).to(device)

    def with_teacher_forward_dense():
        teacher.features(dense.images)
        train_step(contexts["none"], dense, main_stage)

    return {
        "a_student": lambda: train_step(contexts["none"], batch, main_stage),
        "b_student_teacher": with_teacher_forward,
        "c_icd": lambda: train_step(contexts["icd"], batch, main_stage),
        "d_fitnet": lambda: train_step(contexts["fitnet"], batch, main_stage),
        "e_decoder_warmup": decoder_warmup,
        "b_dense_student_teacher": with_teacher_forward_dense,
        "c_dense_icd": lambda: train_step(contexts["icd"], dense, main_stage),
    }, icd


# ---- what each distillation method costs (issue #11) ------------------------------------------------

# Every method of the slot on a one-stage and a two-stage pair at demo size: the demo's FCOS pair
# (MobileNetV3-Large -> MobileNetV2) and Faster R-CNN FPN (ResNet-34 -> ResNet-18, FAMILY_ROW_ROIS
# sampled RoIs per image), the same 8 images; "none" + the teacher's forward is the reference.
METHOD_ROWS = method_names()  # every method of the registry
METHOD_PAIRS = ("fcos", "faster_rcnn")


def time_methods(data_root: Path, iters: int, device: torch.device, extra: Sequence[str] = (),
                 methods: Sequence[str] = METHOD_ROWS) -> dict[str, dict]:
    """Per pair, per method: seconds per step, peak memory of one step (the CPU allocator's, via
    the profiler; CUDA's peak on a GPU) and the ratio to the student + teacher-forward step; a
    method that does not support the family gets its ConfigError's first sentence."""
    out: dict[str, dict] = {}
    for pair in METHOD_PAIRS:
        cfg, teacher, student, prior, batch = (demo_setup(data_root, extra) if pair == "fcos"
                                               else family_setup(pair, data_root, extra))
        teacher.to(device)
        batch = batch.to(device)
        ctx = DistContext(device=device)
        plain = step_context(cfg, "none", teacher, student, prior, ctx)

        def reference():
            teacher.features(batch.images)
            train_step(plain, batch, 10**6)
        rows = {"none + teacher": measure_step(reference, iters, device)}
        for method in methods:
            try:
                step = step_context(cfg, method, teacher, student, prior, ctx)
            except ConfigError as e:
                rows[method] = {"not_supported": str(e).split(";")[0]}
                continue
            rows[method] = measure_step(lambda: train_step(step, batch, 10**6), iters, device)
            rows[method]["ratio"] = rows[method]["s_per_iter"] / rows["none + teacher"]["s_per_iter"]
        out[pair] = rows
        print(pair, {k: round(v.get("s_per_iter", float("nan")), 3) for k, v in rows.items()})
    return out


def measure_step(step, iters: int, device: torch.device) -> dict[str, float]:
    """:func:`time_step`, and on the CPU the peak of one more step under the profiler."""
    timed = time_step(step, iters, device)
    if device.type == "cpu":
        timed["peak_mem_mb"] = peak_allocated_mb(step)
    return timed


def methods_table(result: dict) -> str:
    if "methods" not in result:
        return ""
    lines = ["", "Every method at demo size, seconds per training step (median), its ratio to the student "
             "step + teacher forward, and the peak memory PyTorch's allocator holds during one step "
             f"(profiler-measured, MB). FCOS: the demo's MobileNetV3-Large -> MobileNetV2; Faster R-CNN FPN: "
             f"ResNet-34 -> ResNet-18, {FAMILY_ROW_ROIS} sampled RoIs per image; the same 8 images:", "",
             "| method | " + " | ".join(f"{p} s / iter | ratio | peak MB" for p in result["methods"]) + " |",
             "|---|" + "---:|---:|---:|" * len(result["methods"])]
    for method in next(iter(result["methods"].values())):
        cells = []
        for rows in result["methods"].values():
            r = rows[method]
            cells += (["n/a", "", ""] if "not_supported" in r else
                      [f"{r['s_per_iter']:.3f}", f"{r.get('ratio', 1.0):.2f}", f"{r.get('peak_mem_mb', float('nan')):.0f}"])
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    skipped = [f"{m} on {p}: {r['not_supported']}" for p, rows in result["methods"].items()
               for m, r in rows.items() if "not_supported" in r]
    lines += ([""] + [f"n/a: {s}." for s in skipped]) if skipped else []
    return "\n".join(lines) + "\n"


# ---- ICD weight memory: chunked vs all-query, each in a fresh process ------------------------------

COCO_LEVELS = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]  # p2-p6 of 800x1344
COCO_STRIDES = [4, 8, 16, 32, 64]


def _weights_inputs():
    torch.manual_seed(0)
    feats = [torch.randn(2, 256, h, w) for h, w in COCO_LEVELS]
    prior = prior_tensors(UniformPrior(80))
    icd = ICDModule(num_classes=80, teacher_channels=256, student_channels=256, prior=prior,
                    max_instances=100)
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(2):  # 100 real instances per image: all 100 queries are real
        xy = torch.rand(100, 2, generator=g) * torch.tensor([1000.0, 600.0])
        wh = 20 + torch.rand(100, 2, generator=g) * 200
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 80, (100,), generator=g)})
    with torch.no_grad():
        tokens = icd.teacher_tokens(feats, COCO_STRIDES, [(800, 1333)] * 2)
        inst = icd.instances(targets, [(800, 1333)] * 2)
        query = icd.queries(inst)[:, :100]
        keys, _ = icd.keys_and_values(icd.layers[0], tokens)
    del feats
    return icd.layers[0], query, keys, tokens.valid, inst.is_real[:, :100]


def peak_allocated_mb(fn) -> float:
    """Peak of the bytes PyTorch's CPU allocator holds while ``fn`` runs, above what it held
    before: the profiler records every allocation and free in order; the peak of their running
    sum is the transient peak."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def weights_memory() -> dict[str, dict[str, float] | float]:
    """Chunked real-instance weights vs all-query weights on the same COCO-size inputs."""
    layer, query, keys, valid, is_real = _weights_inputs()

    def chunked():
        return layer.real_instance_weights(query, keys, valid, is_real)

    @torch.no_grad()
    def all_query():  # [B, H, K, S] probabilities materialised
        return (layer.attention_probs(query, keys, valid) * is_real[:, None, :, None]).sum(dim=2)

    out: dict = {}
    for name, fn in (("chunked", chunked), ("all_query", all_query)):
        start = time.perf_counter()
        w = fn()
        seconds = time.perf_counter() - start
        out[name] = {"peak_mb": peak_allocated_mb(fn), "seconds": seconds, "weights_sum": float(w.sum())}
    # both compute the same weights: Σ_s w = number of real instances, per image and head
    out["max_abs_difference"] = float((chunked() - all_query()).abs().max())
    out["memory_ratio"] = out["all_query"]["peak_mb"] / out["chunked"]["peak_mb"]
    return out


def coco_table(result: dict) -> str:
    if "coco_size" not in result:
        return "\nCOCO-size steps (R-101 -> R-50, 2 x 800x1333): not run, no GPU in this run.\n"
    lines = ["", "COCO-size steps, R-101 teacher -> R-50 student, 2 images (seconds per iteration; peak "
             "GPU memory in MB where measured):", "", "| family | step | s / iter | peak MB |", "|---|---|---:|---:|"]
    for family, timed in result["coco_size"].items():
        for name, v in timed.items():
            if isinstance(v, dict):
                lines.append(f"| {family} | {name} | {v['s_per_iter']:.3f} | {v.get('peak_mem_mb', float('nan')):.0f} |")
        lines.append(f"| {family} | icd_overhead_ratio | {timed['icd_overhead_ratio']:.3f} | |")
    return "\n".join(lines) + "\n"


def write_results(result: dict) -> None:
    steps = result["cpu_demo"]
    rows = "\n".join(f"| {name} | {v['s_per_iter']:.3f} |" for name, v in steps.items())
    mem = result["icd_weights_memory"]
    text = f"""{BEGIN}
Command: `python benchmarks/speed.py --json docs/speed.json` on {result['hardware']}, torch
{result['torch']}, {result['date']}. Median seconds per training iteration over
{result['iters']} iterations, the demo's models (FCOS, MobileNetV3-Large teacher, MobileNetV2
student, ICD decoder width {result['icd_hidden_dim']}) and one batch of 8 shapes images (~128x176).

| step | s / iter |
|---|---:|
{rows}

**icd_overhead_ratio** (c)/(b) = **{result['icd_overhead_ratio']:.3f}** (target ≤ 1.10); at BCCD
density (the same images with 13 random boxes each, `*_dense` rows) **{result['icd_overhead_ratio_dense']:.3f}**.

ICD distillation weights at COCO size (p2-p6 of 2 x 800x1344, S = 89,523 tokens, 100 real
queries per image), peak memory held by PyTorch's allocator while computing them (profiler-measured): chunked (16
queries at a time) **{mem['chunked']['peak_mb']:.0f} MB** in {mem['chunked']['seconds']:.2f} s;
all-query (B·H·K·S probabilities) **{mem['all_query']['peak_mb']:.0f} MB** in
{mem['all_query']['seconds']:.2f} s: **{mem['memory_ratio']:.1f}x** less memory (target ≥ 4x); largest
difference between the two results {mem['max_abs_difference']:.1e}.
{families_table(result)}{methods_table(result)}{coco_table(result)}{END}"""
    page = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    if BEGIN in page:
        page = page[: page.index(BEGIN)] + text + page[page.index(END) + len(END):]
    else:
        page += "\n## Speed: what distillation costs\n\n" + text + "\n"
    RESULTS.write_text(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-results", action="store_true", help="do not update docs/RESULTS.md")
    parser.add_argument("--coco-size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"),
                        help="image size of the GPU (COCO-size) part")
    parser.add_argument("--coco-on-cpu", action="store_true",
                        help="run the COCO-size part on the CPU too (slow; for checking the script)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        fns, icd = step_functions(*demo_setup(Path(tmp) / "shapes"), cpu)
        steps = {name: time_step(fn, args.iters, cpu) for name, fn in fns.items()}
        families = time_families(Path(tmp) / "shapes", args.iters, cpu)
        methods = time_methods(Path(tmp) / "shapes", args.iters, cpu)
    for name, v in steps.items():
        print(f"{name:>20}: {v['s_per_iter']:.3f} s/iter")
    result = {
        "date": date.today().isoformat(),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                    f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        "torch": torch.__version__,
        "iters": args.iters,
        "icd_hidden_dim": icd.hidden_dim,
        "cpu_demo": steps,
        "icd_overhead_ratio": steps["c_icd"]["s_per_iter"] / steps["b_student_teacher"]["s_per_iter"],
        "icd_overhead_ratio_dense": steps["c_dense_icd"]["s_per_iter"] / steps["b_dense_student_teacher"]["s_per_iter"],
        "icd_weights_memory": weights_memory(),
        "demo_families": families,
        "methods": methods,
    }
    coco_device = torch.device("cuda") if torch.cuda.is_available() else (cpu if args.coco_on_cpu else None)
    if coco_device is not None:
        result["coco_size"] = {}
        for family in ("faster_rcnn", "retinanet"):
            fns, _ = step_functions(*coco_setup(family, tuple(args.coco_size)), coco_device)
            timed = {name: time_step(fn, args.iters, coco_device) for name, fn in fns.items()}
            timed["icd_overhead_ratio"] = timed["c_icd"]["s_per_iter"] / timed["b_student_teacher"]["s_per_iter"]
            result["coco_size"][family] = timed
            print(family, {k: (round(v["s_per_iter"], 3) if isinstance(v, dict) else round(v, 3)) for k, v in timed.items()})
    print(f"icd_overhead_ratio: {result['icd_overhead_ratio']:.3f} (dense: {result['icd_overhead_ratio_dense']:.3f})")
    print(f"ICD weights memory, chunked vs all-query: {result['icd_weights_memory']['memory_ratio']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.no_results:
        write_results(result)


if __name__ == "__main__":
    main()
