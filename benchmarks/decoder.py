"""Does ICD's decoder learn to identify instances, and how fast? Decoder-only training on a
frozen teacher, diagnostics against iterations, per decoder variant.

    python benchmarks/decoder.py --suite synthetic --teacher demo_out/teacher/detector.pt
    python benchmarks/decoder.py --suite bccd --teacher runs/bccd_teacher/detector.pt

The suite's ICD recipe (``configs/demo/icd.yaml`` or ``configs/voc/bccd_icd.yaml``) gives the
data, the teacher's architecture and the ICD module; its **training** split is divided into a
part to train the decoder on and a validation part the diagnostics are measured on (the test
split is never read, so a default chosen from this benchmark is chosen on training data). The
teacher's features of ``--batches`` augmented training batches are computed once and cycled.
Each variant trains the ICD module alone on its auxiliary losses (the decoder warm-up stage),
AdamW with the recipe's weight decay and clip norm, constant LR, and reports ``icd/idf_auroc``,
``icd/attn_in_box`` (vs ``icd/attn_in_box_uniform``) and ``icd/attn_distinct`` every
``--eval-every`` iterations, and for the position-prior variants the same numbers of the fixed
kernel alone (``icd/*_kernel``): what a variant's decoder learned is its margin over its kernel.
Results: ``--json`` and, unless ``--no-results``, docs/RESULTS.md between the "decoder benchmark
(<suite>)" markers.

These are decoder metrics on training images; they do not choose ICD's defaults. That choice is
made on the student, on validation: ``benchmarks/accuracy.py --split validation --students``
with the rows of ``ICD_DEFAULT_ROWS`` (docs/method.md, "Choosing ICD's defaults").
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch

from icdistill.config import load_config
from icdistill.data import build_datasets, build_train_loader, compute_prior
from icdistill.detectors import build_teacher
from icdistill.distill.icd.build import prior_tensors
from icdistill.distill.icd.module import ICDModule
from icdistill.distill.icd.diagnostics import icd_diagnostics
from icdistill.engine.optim import build_method_optimizer, clip_gradients

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "RESULTS.md"
RECIPES = {"synthetic": "configs/demo/icd.yaml", "bccd": "configs/voc/bccd_icd.yaml"}
# name -> (distill.icd.position_prior, LR, λ_h = distill.icd.position_scale, the fixed kernel width):
# the paper's decoder at its LR and at 10x, and this project's position prior at both and with
# wider-to-narrower kernels.
VARIANTS = {
    "paper_lr1e-4": (False, 1e-4, 1.0),
    "paper_lr1e-3": (False, 1e-3, 1.0),
    "position_lr1e-4": (True, 1e-4, 1.0),
    "position_lr1e-3": (True, 1e-3, 1.0),
    "position_lr1e-3_scale4": (True, 1e-3, 4.0),
    "position_lr1e-3_scale16": (True, 1e-3, 16.0),
    "position_lr1e-3_scale64": (True, 1e-3, 64.0),
}


def split_training_set(dataset, validation_fraction: float, seed: int = 0):
    """(train part, validation part) of a CocoDetection as index subsets (seeded, disjoint)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g).tolist()
    n_val = max(1, int(round(validation_fraction * len(dataset))))
    return order[n_val:], order[:n_val]


class Subset(torch.utils.data.Dataset):
    """The items ``indices`` of ``dataset`` (keeps ``class_names`` for the diagnostics)."""

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset, self.indices, self.class_names = dataset, indices, dataset.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        # The training loader asks for (index, augmentation seed) pairs.
        if isinstance(i, tuple):
            return self.dataset[(self.indices[i[0]], i[1])]
        return self.dataset[self.indices[i]]


def evaluation_view(train_set, test_set, indices):
    """The validation images through the test-time transform (no augmentation)."""
    clone = copy.copy(train_set)  # shares the annotations; only the transform differs
    clone.transforms = test_set.transforms
    return Subset(clone, indices)


def cache_teacher_batches(teacher, train_part, levels, batch_size: int, count: int, seed: int):
    """``count`` augmented batches of the train part with the teacher's distilled levels."""
    loader = build_train_loader(train_part, batch_size=batch_size, seed=seed)
    cached = []
    for batch, _ in zip(loader, range(count)):
        feats = teacher.features(batch.images)
        cached.append(([feats[n] for n in levels], batch.targets, batch.image_sizes))
    return cached


def train_variant(cfg, prior, teacher, cached, validation, levels, strides, *, position: bool, lr: float, scale: float,
                  iters: int, eval_every: int, seed: int, diagnostic_images: int) -> list[dict]:
    """Decoder-only training of one variant; the diagnostics every ``eval_every`` iterations."""
    d, own = cfg.distill, cfg.distill.icd
    torch.manual_seed(seed)
    icd = ICDModule(num_classes=len(prior.freq), teacher_channels=teacher.out_channels,
                    student_channels=teacher.out_channels, prior=prior_tensors(prior), hidden_dim=own.hidden_dim,
                    num_heads=own.num_heads, num_layers=own.num_layers, fake_ratio=own.fake_ratio,
                    max_instances=own.max_instances or 300, jitter=own.jitter, position_prior=position,
                    position_scale=scale, seed=seed)
    opt = build_method_optimizer(icd, lr=lr, weight_decay=d.weight_decay)
    curve, started, cpu = [], time.perf_counter(), torch.device("cpu")
    for it in range(1, iters + 1):
        feats, targets, sizes = cached[(it - 1) % len(cached)]
        losses = icd.losses(feats, None, targets, sizes, strides)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        clip_gradients(icd.parameters(), max_norm=d.grad_clip_norm)
        opt.step()
        if it % eval_every == 0 or it == iters:
            point = {"iter": it, "train_s": round(time.perf_counter() - started, 1),
                     **{k: round(float(v.detach()), 4) for k, v in losses.items()},
                     **icd_diagnostics(icd, teacher, validation, levels, strides, cpu, max_images=diagnostic_images)}
            curve.append(point)
            print(f"  it {it:5d}: " + "  ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in point.items()
                                                 if k.startswith("icd/")), flush=True)
    return curve


def results_table(result: dict) -> str:
    rows = ["| variant | AUROC at " + " / ".join(str(p["iter"]) for p in next(iter(result["variants"].values())))
            + " it | attn in box (uniform) at the end | attn distinct | kernel alone: AUROC / in box / distinct "
            "| s / it |", "|---|---|---|---|---|---:|"]
    for name, curve in result["variants"].items():
        last = curve[-1]
        kernel = " / ".join(format(last[k], ".3f") for k in ("icd/idf_auroc_kernel", "icd/attn_in_box_kernel",
                                                              "icd/attn_distinct_kernel") if k in last) or "no kernel"
        rows.append(
            f"| {name} | {' / '.join(format(p['icd/idf_auroc'], '.2f') for p in curve)} | "
            f"{last['icd/attn_in_box']:.3f} ({last['icd/attn_in_box_uniform']:.3f}) | {last['icd/attn_distinct']:.3f} | "
            f"{kernel} | {last['train_s'] / last['iter']:.3f} |"
        )
    return "\n".join(rows)


def write_results(result: dict) -> None:
    suite = result["suite"]
    begin, end = f"<!-- decoder benchmark ({suite}): begin -->", f"<!-- decoder benchmark ({suite}): end -->"
    text = f"""{begin}
Command: `{result['command']}` on {result['hardware']}, torch {result['torch']}, {result['date']}.
Decoder-only training on the frozen teacher `{result['teacher']}` ({result['train_images']} training
images, {result['batches']} cached augmented batches of {result['batch_size']}); diagnostics on
{result['validation_images']} held-out **training** images (up to {result['diagnostic_images']} used);
one seed.

{results_table(result)}
{end}"""
    page = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    if begin in page:
        page = page[: page.index(begin)] + text + page[page.index(end) + len(end):]
    else:
        page += f"\n### Decoder benchmark: {suite}\n\n" + text + "\n"
    RESULTS.write_text(page)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=tuple(RECIPES), default="synthetic")
    parser.add_argument("--teacher", required=True, help="the suite's teacher (a detector.pt)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=tuple(VARIANTS))
    parser.add_argument("--merge", type=Path, help="an earlier --json whose variants are kept beside the new ones")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batches", type=int, default=40, help="cached teacher batches")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--diagnostic-images", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_config(ROOT / RECIPES[args.suite], [f"teacher.weights={args.teacher}", *args.set])
    train_set, test_set = build_datasets(cfg.data, with_masks=False, progress=False)
    train_idx, val_idx = split_training_set(train_set, args.validation_fraction, args.seed)
    train_part, validation = Subset(train_set, train_idx), evaluation_view(train_set, test_set, val_idx)
    teacher = build_teacher(cfg.teacher, train_set.num_classes)
    levels, strides = teacher.level_names, teacher.strides
    prior = compute_prior(train_set)  # annotations of the training split only
    cached = cache_teacher_batches(teacher, train_part, levels, cfg.solver.ims_per_batch, args.batches, args.seed)
    result = {
        "suite": args.suite, "date": date.today().isoformat(), "torch": torch.__version__,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU",
        "command": "python benchmarks/decoder.py " + shlex.join(argv),  # as typed, every option
        "teacher": args.teacher, "train_images": len(train_idx), "validation_images": len(val_idx),
        "batches": len(cached), "batch_size": cfg.solver.ims_per_batch, "diagnostic_images": args.diagnostic_images,
        "variants": {},
    }
    for name in args.variants:
        position, lr, scale = VARIANTS[name]
        print(f"{name}:", flush=True)
        result["variants"][name] = train_variant(
            cfg, prior, teacher, cached, validation, levels, strides, position=position, lr=lr, scale=scale, iters=args.iters,
            eval_every=args.eval_every, seed=args.seed, diagnostic_images=args.diagnostic_images)
    if args.merge and args.merge.is_file():
        earlier = json.loads(args.merge.read_text())["variants"]
        result["variants"] = {**{k: v for k, v in earlier.items() if k not in result["variants"]}, **result["variants"]}
    print(results_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.no_results:
        write_results(result)


if __name__ == "__main__":
    main()
