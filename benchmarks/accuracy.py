"""Accuracy benchmark: a teacher, then baseline / comparison-method / ICD students, several seeds.

    python benchmarks/accuracy.py --suite synthetic [--json out.json] [--seeds 0 1 2] [--jobs 2]
    python benchmarks/accuracy.py --suite bccd [--bccd-root ../shared/data/bccd] [--json out.json]
    python benchmarks/accuracy.py --suite bccd_c4 | bccd_dc5   (FPN-free Faster R-CNN: seed 0)
    python benchmarks/accuracy.py --suite synthetic_retinanet  (FCOS teacher -> RetinaNet: seed 0)
    python benchmarks/accuracy.py --suite synthetic_condinst   (CondInst, box and mask AP: seed 0)
    python benchmarks/accuracy.py --suite bccd_cascade         (Cascade R-CNN teacher -> Faster R-CNN: seed 0)
    options: --students ROW ...  --split test|validation  --weights-from docs/sweep_bccd.json
             --out DIR  --eval-period N  --quick  --no-results  --results  --set KEY=VALUE (every run)

A suite is a data set and its shipped recipes (teacher, student, ICD student, and where the suite
has them, one recipe per comparison method): ``synthetic`` uses ``configs/demo/*.yaml`` (the
demo's shapes data, generated into ``<out>/data``), ``bccd`` uses ``configs/voc/bccd_*.yaml``
(train on trainval, test on test), ``bccd_c4`` / ``bccd_dc5`` ``configs/voc/bccd_{c4,dc5}_*.yaml``,
``synthetic_retinanet`` the demo's FCOS teacher distilled into a RetinaNet student
(``configs/demo/retinanet_*.yaml``: a cross-architecture pair), ``synthetic_condinst`` the demo
as CondInst on the shapes' instance masks (``configs/demo/condinst_*.yaml``; its table adds mask AP),
``bccd_cascade`` a Cascade R-CNN teacher distilled into a Faster R-CNN student on BCCD
(``configs/voc/bccd_{cascade_teacher,faster_rcnn_student,faster_rcnn_icd_from_cascade}.yaml``).
Every schedule comes from the recipes. Student rows (``--students``; the suite's default in
``SUITES``): ``baseline`` = student recipe; ``icd`` = ICD recipe; the comparison methods
``fitnet mimic fgfi fbkd gid defeat chen2017`` = the method's own recipe where the suite has one
(bccd), else the ICD recipe + ``distill.method=M`` (the JSON's ``meta.rows`` says which).
Inheriting is a protocol switch for every row: ``baseline_inherit`` (the ICD recipe's teacher,
``distill.method=none distill.inherit=true``: the student starts from the teacher's neck/head
tensors and trains without any distillation loss), ``icd_inherit`` and ``<method>_inherit`` (the
suite's ``inherit_methods``: FitNet, FGFI, DeFeat on bccd), each skipped when no neck/head tensor of
the teacher fits the student; the ICD ablation (docs/method.md) ``icd_uniform`` / ``icd_gtbox`` = ICD recipe +
``distill.icd.ablation_weights=uniform`` / ``gt_box``, ``icd_prior`` = ICD recipe + this
project's position prior and 10x decoder warm-up LR, ``icd_paper_warm3k`` (below: the paper's
decoder, instance-conditional after its 3000-iteration warm-up); the rows that choose ICD's defaults on the
student (``ICD_DEFAULT_ROWS``, docs/method.md): ``icd_{prior,paper}{,_lr1x,_nowarmup}`` (decoder:
this project's position prior or the paper's; decoder warm-up at LR 1e-3, at ``distill.lr``, or
none) and the paper's decoder with a long warm-up, ``icd_paper_warm6k`` (6000 iterations at
``distill.lr``, the paper's VOC length) and ``icd_paper_warm3k`` (3000 at 1e-3), each stating its
decoder and warm-up LR; ``icd_paper_lr1x`` is the paper's design, the
ICD recipe's. Each run can be repeated by hand with
the command in ``<run>/command.txt``.

``--split validation`` is the protocol for choosing hyperparameters (never the test split): every
run, the teacher too, trains on a training part and is evaluated on held-out validation images
(bccd: ImageSets ``train`` -> ``val``, both inside trainval; synthetic: the shapes generator at
seed 1, whose train and test images are both disjoint from the seed-0 test images), in its own
folder (``<suite>-validation``), with its own RESULTS.md section and PNG. ``--weights-from``
reads the weights a sweep chose (benchmarks/sweep.py) and sets ``distill.<method>.loss_weight``
(or ``distill.weight_scale`` for methods with several term weights) on each
row it has (a row it does not have takes its method's, e.g. ``icd_uniform`` takes ``icd``'s).

Runs live in ``<out>/teacher`` and ``<out>/<student>/seed<k>``. A run whose saved config (and, for
distillation, teacher checkpoint) equals what would run now is reused ("cached"); an interrupted
one resumes from its last checkpoint. ``--jobs N`` trains students in N spawned processes with
threads/N threads each (threads: $OMP_NUM_THREADS or the CPU count); the teacher runs first, alone.
Every finished run also leaves a *record* in ``benchmarks/records/<out folder>`` (benchmarks/records.py:
its small files, and the teacher's weights), kept in git: a fresh checkout restores the records
and reuses the runs whose config and teacher are unchanged, so a suite longer than one sitting
can be finished over several (``--records DIR`` elsewhere, ``--no-records`` neither; none for
``--quick``). The table says when and on what machine its runs were trained.

Runs of one seed are paired (the same initial student weights, the same student batches, a
method-only stage on its own stream: engine/setup.py); the table gives per row the paired
difference to the baseline and to ICD with a 95 % interval (paired t over seeds, benchmarks/paired.py)
and calls a row better only when its interval excludes 0; five seeds by default. It names the
machine type and warns loudly when its runs come from several: sittings get different machines,
and the same recipe and seed give other numbers on another CPU, so a seed is a pair only where
both runs share a machine type (a cell names its pairs when fewer than the seeds). Runs go
seed-major (every row of seed 0, then seed 1, ...), and a seed some of whose rows were trained on
another machine type waits until the others are done (``schedule``).

Writes ``--json`` (teacher metrics; per student the seeds' metrics, their mean and sample std;
``machines``: per seed the machine type of its run; ``paired``: per row the intervals; ``meta``), an AP-vs-iteration plot, ``<out>/compare.html`` (``icdistill compare`` of the runs),
and (unless ``--no-results``; ``--quick`` only with
``--results``) the suite's section of docs/RESULTS.md with the PNG in docs/.
``--quick`` is a smoke run on tiny data and schedules: the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from icdistill.config import Config, config_from_dict, load_config
from icdistill.errors import ConfigError
from icdistill.demo import demo_config_path
from icdistill.detectors.families import FAMILIES
from icdistill.distill.core.registry import ADAPT, method_names, method_spec, support_label
from icdistill.teacher_vs_student import below_baseline, teacher_is_weaker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this file
from paired import describe_interval, paired_interval  # noqa: E402
from records import Records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "RESULTS.md"
RECORDS = ROOT / "benchmarks" / "records"  # finished runs kept in git (records.py)
TRAINED = ("fresh", "resume")  # prepare()'s states that train; 'cached' and 'record' reuse
RECIPES = demo_config_path("teacher").parents[1]  # the shipped configs/ folder
# The comparison methods, FitNet first (the rows are ordered by publication within the paper's set
# and the methods adopted after it); any other registered method follows, so a new method module
# gets its rows without an edit here.
PAPER_ORDER = ("fitnet", "mimic", "fgfi", "fbkd", "gid", "defeat", "chen2017", "cwd", "fgd", "mgd", "pkd", "crosskd")
METHODS = (*(m for m in PAPER_ORDER if m in method_names()),
           *sorted(set(method_names()) - set(PAPER_ORDER) - {"icd"}))
BASE_ROWS = ("baseline", "fitnet", "icd", "baseline_inherit", "icd_inherit")
# ICD's ablation on the test split: uniform / GT-box token weights, this project's prior, and (added
# 2026-12-08 after step 2b, before any test run) the paper's decoder with a warm-up long enough to
# become instance-conditional, so the test table shows what instance-conditional attention adds.
ABLATION_ROWS = ("icd_uniform", "icd_gtbox", "icd_prior", "icd_paper_warm3k")
INHERIT = "_inherit"  # a row name's suffix: the student starts from the teacher's neck/head tensors
# The comparison methods of a suite that also run with inheriting (Suite.inherit_methods): FitNet and
# the two best comparison methods on BCCD's old-protocol table (DeFeat 34.8, FGFI 34.6), so that
# ICD's contribution on top of inheriting is measured against the same switch on other methods.
INHERIT_METHODS = ("fitnet", "fgfi", "defeat")
# A sweep's grid: every method's default weight x these (one meaning for every method);
# weight_override below writes the key.
WEIGHT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
# The candidate training rules (schedule, EMA of the student's weights); rule_sets writes them.
RULES = ("step", "step_ema", "cosine", "cosine_ema")
REFERENCES = ("baseline", "icd")  # every row's paired difference to these rows (--references)
TEACHER_FOLDER = "teacher"  # the suite's teacher run, <out>/teacher (shared by every benchmark of the split)
SEEDS = (0, 1, 2, 3, 4)  # at least five: a paired t interval over 2-3 seeds is too wide to resolve anything


@dataclasses.dataclass(frozen=True)
class Suite:
    """A data set (its quick overrides and validation split) and its recipes in ``configs/<folder>``;
    ``method_recipe`` (``{}`` = the method) names a comparison method's own recipe, where it exists."""

    dataset: str
    folder: str
    teacher: str
    student: str
    icd: str
    method_recipe: str | None = None
    students: tuple[str, ...] = BASE_ROWS
    seeds: tuple[int, ...] = SEEDS
    inherit_methods: tuple[str, ...] = ()  # comparison methods that also get a `<method>_inherit` row

    @property
    def rows(self) -> tuple[str, ...]:
        """The default student rows: ``students`` and a ``<method>_inherit`` row per ``inherit_methods``."""
        return (*self.students, *(m + INHERIT for m in self.inherit_methods if m + INHERIT not in self.students))


SUITES = {
    "synthetic": Suite("synthetic", "demo", "teacher.yaml", "student.yaml", "icd.yaml"),
    "bccd": Suite("bccd", "voc", "bccd_teacher.yaml", "bccd_student.yaml", "bccd_icd.yaml", "bccd_{}.yaml",
                  students=(*BASE_ROWS, *METHODS[1:], *ABLATION_ROWS), inherit_methods=INHERIT_METHODS),
    # the paper's Table 9 pair FCOS -> RetinaNet at demo size (the synthetic suite's teacher)
    "synthetic_retinanet": Suite("synthetic", "demo", "teacher.yaml", "retinanet_student.yaml", "retinanet_icd.yaml",
                                 students=("baseline", "icd"), seeds=(0,)),
    # the paper's Table 8 family (CondInst) at demo size, trained on the shapes' instance masks
    "synthetic_condinst": Suite("synthetic", "demo", "condinst_teacher.yaml", "condinst_student.yaml", "condinst_icd.yaml",
                                students=("baseline", "icd"), seeds=(0,)),
    # the paper's Table 9 pair Cascade (Mask) R-CNN -> Faster R-CNN on real images (boxes only)
    "bccd_cascade": Suite("bccd", "voc", "bccd_cascade_teacher.yaml", "bccd_faster_rcnn_student.yaml",
                          "bccd_faster_rcnn_icd_from_cascade.yaml", students=("baseline", "icd"), seeds=(0,)),
    "bccd_c4": Suite("bccd", "voc", "bccd_c4_teacher.yaml", "bccd_c4_student.yaml", "bccd_c4_icd.yaml",
                     students=("baseline", "icd"), seeds=(0,)),
    "bccd_dc5": Suite("bccd", "voc", "bccd_dc5_teacher.yaml", "bccd_dc5_student.yaml", "bccd_dc5_icd.yaml",
                      students=("baseline", "icd"), seeds=(0,)),
}


# The two decoders and three warm-ups of the comparison that chose ICD's defaults (docs/method.md):
# this project's position prior [ADAPT] or the paper's decoder; the recipe's decoder warm-up
# (200 iterations on BCCD) at LR 1e-3 (10x distill.lr), at distill.lr (the paper's), or none.
ICD_DECODERS = {"prior": ("distill.icd.position_prior=true",), "paper": ("distill.icd.position_prior=false",)}
ICD_WARMUPS = {"": ("distill.icd.decoder_warmup_lr=0.001",), "_lr1x": ("distill.icd.decoder_warmup_lr=null",),
               "_nowarmup": ("distill.icd.decoder_warmup_iters=0", "distill.icd.decoder_warmup_lr=0.001")}
# Each row of that comparison and its overrides of the ICD recipe.
ICD_DEFAULT_SETS = {f"icd_{decoder}{warmup}": (*decoder_sets, *warmup_sets)
                    for decoder, decoder_sets in ICD_DECODERS.items() for warmup, warmup_sets in ICD_WARMUPS.items()}
# Added 2026-12-08, before their runs: on BCCD the paper's decoder learns to identify instances
# only after ~2000 decoder-only iterations at LR 1e-3 (benchmarks/decoder.py), far beyond the
# recipe's 200-iteration warm-up, so step 2 never saw it instance-conditional. Two rows with a
# warm-up long enough: the paper's own VOC length (6k at distill.lr) and 3k at 10x (ours).
ICD_DEFAULT_SETS.update({
    "icd_paper_warm6k": (*ICD_DECODERS["paper"], "distill.icd.decoder_warmup_iters=6000",
                         "distill.icd.decoder_warmup_lr=null"),
    "icd_paper_warm3k": (*ICD_DECODERS["paper"], "distill.icd.decoder_warmup_iters=3000",
                         "distill.icd.decoder_warmup_lr=0.001"),
})
ICD_DEFAULT_ROWS = tuple(ICD_DEFAULT_SETS)


@dataclasses.dataclass(frozen=True)
class Row:
    """A student row: its base recipe (``student``, ``icd``, or ``method``: the method's own recipe
    where the suite has one, else the ICD recipe + ``distill.method``) and extra overrides."""

    base: str
    sets: tuple[str, ...] = ()
    method: str = "icd"  # what distill.method the row runs (for --weights-from and the sweep)


STUDENTS = {"baseline": Row("student", method="none"), "fitnet": Row("method", method="fitnet"),
            "icd": Row("icd"),
            # the ICD recipe for its teacher section; no distillation loss
            "baseline_inherit": Row("icd", ("distill.method=none", "distill.inherit=true"), method="none"),
            "icd_inherit": Row("icd", ("distill.inherit=true",)),
            **{m: Row("method", method=m) for m in METHODS[1:]},
            **{m + INHERIT: Row("method", ("distill.inherit=true",), method=m) for m in METHODS},
            "icd_uniform": Row("icd", ("distill.icd.ablation_weights=uniform",)),
            "icd_gtbox": Row("icd", ("distill.icd.ablation_weights=gt_box",)),
            # Choosing ICD's defaults on the student (docs/method.md): decoder x warm-up LR x warm-up
            # length. Each row states its decoder and warm-up LR, so it stays the same run whatever
            # the ICD recipe sets (the recipe runs the default the comparison chose).
            **{row: Row("icd", sets) for row, sets in ICD_DEFAULT_SETS.items()}}
BOX_COLUMNS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl")
MASK_COLUMNS = ("segm/AP", "segm/AP50", "segm/AP75")  # only when the teacher has mask AP
TIME_COLUMNS = ("time/iter_s", "time/method_stage_s", "time/train_s")


def table_keys(data: dict[str, Any]) -> tuple[str, ...]:
    """The columns of a suite's table: box AP and time, and mask AP for a mask family."""
    return BOX_COLUMNS + (MASK_COLUMNS if data["teacher"].get("segm/AP") is not None else ()) + TIME_COLUMNS
# The validation split of each data set: held-out images inside the training data, never test.
VALIDATION = {"synthetic": ["data.shapes.seed=1"], "bccd": ["data.voc.train_splits=[train]", "data.voc.test_splits=[val]"]}
QUICK = {"common": ["solver.ims_per_batch=2", "solver.checkpoint_period=1000", "solver.log_period=2",
                    "eval.batch_size=8", "eval.viz_images=0", "model.detections_per_image=10"],
         # per data set; bccd trains on `val` (87 images): with --split validation also tested on it
         "data": {"synthetic": ["data.shapes.num_train=16", "data.shapes.num_test=8", "data.shapes.image_height=64",
                                "data.shapes.image_width=96", "data.min_sizes=[64]", "data.max_size=128",
                                "data.test_size=64"],
                  "bccd": ["data.voc.train_splits=[val]", "data.validate_images=false", "data.min_sizes=[64]",
                           "data.max_size=96", "data.test_size=64"]},
         "teacher": ["solver.max_iter=8"], "student": ["solver.max_iter=6"],
         # an 8-iteration teacher scores ~0 AP: the teacher check would stop the smoke run
         "distill": ["solver.max_iter=6", "distill.icd.decoder_warmup_iters=4", "distill.warmup_iters=2",
                     "distill.check_teacher=false"]}


@dataclasses.dataclass
class Run:
    """One training run: the recipe and --set overrides that reproduce it, and where it lives."""

    name: str
    seed: int | None
    recipe: Path
    overrides: list[str]
    out: Path
    teacher_pt: Path | None = None

    @functools.cached_property
    def cfg(self) -> Config:
        """The resolved config (read once: recipes do not change during a benchmark)."""
        return load_config(self.recipe, self.overrides)

    def stamp(self) -> dict[str, Any]:
        """What besides config.yaml decides the result: the teacher checkpoint's digest."""
        if self.teacher_pt is None or not self.teacher_pt.is_file():
            return {"teacher_sha256": None}
        return {"teacher_sha256": hashlib.sha256(self.teacher_pt.read_bytes()).hexdigest()}

    def command(self) -> str:
        verb = "train" if self.cfg.distill.method == "none" else "distill"
        sets = " ".join(shlex.quote(f"--set={s}") for s in self.overrides)
        return f"icdistill {verb} {shlex.quote(str(self.recipe))} --out {shlex.quote(str(self.out))} {sets}"


def suite_recipes(suite: str) -> dict[str, Path]:
    """``{"teacher", "student", "icd"}`` -> the suite's shipped recipe files."""
    s = SUITES[suite]
    return {k: RECIPES / s.folder / getattr(s, k) for k in ("teacher", "student", "icd")}


def row_recipe(suite: str, name: str) -> tuple[Path, list[str], str]:
    """A student row's recipe, its extra overrides and where they come from (for ``meta.rows``)."""
    s, row = SUITES[suite], STUDENTS[name]
    if row.base == "method":
        own = RECIPES / s.folder / s.method_recipe.format(row.method) if s.method_recipe else None
        if own is not None and own.is_file():
            return own, list(row.sets), "the method's own recipe"
        return suite_recipes(suite)["icd"], [f"distill.method={row.method}", *row.sets], "ICD recipe + distill.method"
    base = suite_recipes(suite)[row.base]
    return base, list(row.sets), "student recipe" if row.base == "student" else "ICD recipe" + " + overrides" * bool(row.sets)


def default_loss_weight(cfg: Config) -> float | None:
    """The distillation loss weight a config runs with: the method's own ``distill.<method>.
    loss_weight`` (null: its default as the builder takes it) for a method with one weight, else
    ``distill.weight_scale`` (a multiplier of the method's term weights); None without
    distillation."""
    from icdistill.distill.methods.fgfi import DEFAULT_WEIGHT as FGFI_WEIGHTS
    from icdistill.distill.icd.build import family_defaults

    d = cfg.distill
    if d.method == "none":
        return None
    section = getattr(d, d.method)
    if not hasattr(section, "loss_weight"):
        return d.weight_scale
    if section.loss_weight is not None:
        return section.loss_weight
    if d.method == "icd":
        return family_defaults(cfg.model.family).loss_weight
    return FGFI_WEIGHTS[section.norm] if d.method == "fgfi" else 1.0


def weight_override(cfg: Config, weight: float) -> str:
    """The ``--set`` that runs ``cfg``'s method at the weight :func:`default_loss_weight` reports."""
    d = cfg.distill
    if hasattr(getattr(d, d.method), "loss_weight"):
        return f"distill.{d.method}.loss_weight={weight:g}"
    return f"distill.weight_scale={weight:g}"


@dataclasses.dataclass
class Plan:
    """What every run of a suite shares: the overrides (data, quick, split, the user's last) and
    where runs live; :meth:`student` makes one student run."""

    suite: str
    out: Path
    common: list[str]
    user: list[str]
    quick: bool
    period: int
    weights: dict[str, float]
    student_sets: tuple[str, ...] = ()  # every student's training rule (--rule / --max-iter), not the teacher's

    @property
    def teacher_pt(self) -> Path:
        return self.out / TEACHER_FOLDER / "detector.pt"

    def teacher(self) -> Run:
        quick = QUICK["teacher"] if self.quick else []
        return Run("teacher", None, suite_recipes(self.suite)["teacher"],
                   [*self.common, *quick, "eval.period=0", *self.user], self.out / TEACHER_FOLDER)

    def student(self, name: str, seed: int, sets: list[str] | None = None, label: str | None = None,
                out: Path | None = None) -> Run:
        """Row ``name`` at ``seed``; ``sets`` replace the --weights-from weight (the sweep's), ``label``
        and ``out`` the run's name and folder (default: the row's, ``<out>/<row>/seed<k>``)."""
        recipe, extra, _ = row_recipe(self.suite, name)
        role = "student" if STUDENTS[name].base == "student" else "distill"
        weight = self.weights.get(name, self.weights.get(STUDENTS[name].method))
        if sets is None:
            sets = [weight_override(load_config(recipe, extra), weight)] if weight is not None and STUDENTS[name].method != "none" else []
        run_sets = [*self.common, *(QUICK[role] if self.quick else []), *extra, *sets, *self.student_sets,
                    f"eval.period={self.period}"]
        run_sets += [f"teacher.weights={self.teacher_pt}"] if role == "distill" else []
        return Run(label or name, seed, recipe, [*run_sets, f"solver.seed={seed}", *self.user],
                   out or self.out / name / f"seed{seed}", self.teacher_pt if role == "distill" else None)


def student_runs(plan: Plan, rows: Sequence[str], seeds: Sequence[int]) -> list[Run]:
    """Every (row, seed) run, seed-major: a sitting completes whole seeds (every row of seed 0,
    then seed 1, ...), so a suite that spans sittings has complete pairs at every stage."""
    return [plan.student(name, seed) for seed in seeds for name in rows]


def split_names(run: Run) -> dict[str, str]:
    """What a run trains and is evaluated on, from its config (``--quick`` changes it)."""
    data = run.cfg.data
    if data.format == "shapes":
        return {"train": f"shapes seed {data.shapes.seed} train", "evaluated on": f"shapes seed {data.shapes.seed} test"}
    return {"train": "+".join(data.voc.train_splits), "evaluated on": "+".join(data.voc.test_splits)}


def data_overrides(args: argparse.Namespace, out: Path) -> list[str]:
    """The data set's location, the split's and --quick's overrides (before the user's --set)."""
    dataset = SUITES[args.suite].dataset
    if dataset == "synthetic":
        common = [f"data.shapes.root={out / 'data'}"]
    else:
        root = Path(args.bccd_root).resolve()
        if not (root / "ImageSets" / "Main").is_dir():
            sys.exit(f"accuracy.py: BCCD not found at {root} (expected VOC layout with ImageSets/Main); "
                     "pass --bccd-root DIR")
        common = [f"data.voc.root={root}"]
    common += VALIDATION[dataset] if args.split == "validation" else []
    return common + ([*QUICK["common"], *QUICK["data"][dataset]] if args.quick else [])


def make_plan(args: argparse.Namespace, out: Path) -> Plan:
    """The suite's shared overrides; the evaluation period defaults to the student's max_iter // 5."""
    common, user = data_overrides(args, out), list(args.set)
    # --quick keeps its smoke schedule; variance.py gives each run its rule itself (no args.rule)
    rule = tuple(rule_sets(args.rule, None if args.quick else args.max_iter)) if getattr(args, "rule", None) else ()
    student_iters = load_config(suite_recipes(args.suite)["student"], [*common, *rule, *user]).solver.max_iter
    period = args.eval_period or (4 if args.quick else max(1, student_iters // 5))
    return Plan(args.suite, out, common, user, args.quick, period, read_weights(args.weights_from), rule)


def rule_sets(rule: str, max_iter: int | None) -> list[str]:
    """The student's ``--set`` values of a training rule (:data:`RULES`, benchmarks/variance.py
    compares them); ``max_iter`` None keeps the recipe's schedule. The EMA rules average over about
    a quarter of the schedule: decay ``1 - 4 / max_iter``, warm-up time constant ``max_iter / 10``."""
    schedule, _, ema = rule.partition("_")
    if schedule not in ("step", "cosine") or ema not in ("", "ema"):
        raise SystemExit(f"unknown training rule {rule!r}; valid: {', '.join(RULES)}")
    sets = [f"solver.lr_schedule={schedule}", f"solver.ema={'true' if ema else 'false'}"]
    if ema and max_iter:
        sets += [f"solver.ema_decay={1 - 4 / max_iter:g}", f"solver.ema_tau={max_iter / 10:g}"]
    return sets + ([f"solver.max_iter={max_iter}"] if max_iter else [])


def rule_clause(meta: dict[str, Any]) -> str:
    """The sentence naming the students' training rule, or '' for the recipe's own."""
    if not meta.get("rule"):
        return ""
    return f"Students' training rule `{meta['rule']}`: " + " ".join(f"`{s}`" for s in meta["student_sets"]) + ". "


def check_rule_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_iter is not None and args.rule is None:
        p.error("--max-iter sets a training rule's schedule: give --rule too (e.g. --rule step)")
    if args.max_iter is not None and args.max_iter < 1:
        p.error(f"--max-iter {args.max_iter}: use a positive number of iterations")


def add_rule_args(p: argparse.ArgumentParser) -> None:
    """``--rule`` / ``--max-iter``: the students' training rule (the teacher keeps its recipe's)."""
    p.add_argument("--rule", choices=RULES, help="the students' training rule, as benchmarks/variance.py runs it "
                                                 "(default: the recipe's schedule, no EMA)")
    p.add_argument("--max-iter", type=int, help="with --rule: the students' iterations (default: the recipe's)")


def read_weights(path: Path | None) -> dict[str, float]:
    """``chosen`` (row -> loss weight) of a sweep's JSON (benchmarks/sweep.py), or {}."""
    if path is None:
        return {}
    try:
        chosen = json.loads(Path(path).read_text())["chosen"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"accuracy.py: --weights-from {path}: not a sweep's JSON with 'chosen' weights ({e})")
    return {k: float(v) for k, v in chosen.items() if v is not None}


def same_config(saved: dict[str, Any] | None, cfg: Config) -> bool:
    """Whether a run folder's saved ``config.yaml`` describes the run ``cfg`` would train.

    The saved config is read back through the current schema first, so an option added after the
    run was made counts as unchanged while it sits at its default (the default keeps the old
    behaviour): adding ``distill.crosskd.pkd_weight`` must not retrain every recorded run. A saved
    key the schema no longer has, or any value that differs, means another run. A key that was
    only renamed (``data.root`` -> ``data.voc.root``) is read under its new name, silently: this is
    a comparison, not a run, so the renaming notice meant for a user's config is not printed."""
    try:
        return config_from_dict(saved or {}, rename_notice=False).to_dict() == cfg.to_dict()
    except (ConfigError, TypeError, ValueError):
        return False


def reusable_state(run: Run) -> str | None:
    """'cached' or 'resume' when ``run.out`` holds this very run (finished, or with a checkpoint
    to resume from); otherwise None, and a folder made with another config is deleted."""
    saved, stamp = run.out / "config.yaml", run.out / "benchmark_stamp.json"
    if not saved.is_file():
        return None
    same = (same_config(yaml.safe_load(saved.read_text()), run.cfg) and stamp.is_file()
            and json.loads(stamp.read_text()) == run.stamp())
    if same and (run.out / "metrics.json").is_file():
        return "cached"
    if same and (run.out / "checkpoints" / "last.pt").is_file():
        return "resume"
    shutil.rmtree(run.out)
    return None


def prepare(run: Run, records: Records | None = None) -> str:
    """'cached', 'record' (cached, restored from its record), 'resume' or 'fresh'. The local
    folder is checked first and cleared when stale, then the record is tried: a stale local
    folder (e.g. the run of an earlier teacher) must not hide a record that matches, or a
    checkout would retrain what git already holds."""
    state = reusable_state(run)
    if state is None and records is not None and records.restore(run.out):
        state = "record" if reusable_state(run) == "cached" else None  # a record holds no checkpoint
    if state is not None:
        return state
    stamp = run.out / "benchmark_stamp.json"
    run.out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(run.stamp()))
    (run.out / "command.txt").write_text(run.command() + "\n")
    return "fresh"


def die_with_parent() -> None:
    """Pool-worker initialiser: on Linux the worker gets SIGTERM when the benchmark process dies
    (``prctl(PR_SET_PDEATHSIG)``), so a benchmark that is killed leaves no training run writing
    on into folders a rerun will clear. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def train_run(recipe: str, overrides: list[str], out: str, resume: bool, threads: int, progress: bool) -> None:
    """Worker entry point (also used in-process): one training run with ``threads`` threads."""
    from icdistill.engine.trainer import train

    torch.set_num_threads(threads)
    train(load_config(recipe, overrides), out, resume=resume, progress=progress)


def read_metrics(run: Run) -> dict[str, Any]:
    """metrics.json with every non-finite value as None."""
    metrics = json.loads((run.out / "metrics.json").read_text())
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def aggregate(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"seeds", "mean", "std"}``: per key the mean and sample std (0 for one seed) of the finite
    values; None where no seed has one (NaN/null metrics, e.g. APl without large objects)."""
    keys = list(dict.fromkeys(k for s in seeds for k in s))
    mean, std = {}, {}
    for k in keys:
        vals = [float(s[k]) for s in seeds if isinstance(s.get(k), (int, float)) and math.isfinite(s[k])]
        mean[k] = statistics.fmean(vals) if vals else None
        std[k] = (statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else None
    return {"seeds": seeds, "mean": mean, "std": std}


def inherit_skip_reason(run: Run) -> str | None:
    """Why the inheriting rows (``*_inherit``) cannot run (no neck/head tensor of the teacher fits
    the student), or None."""
    from icdistill.distill.inherit import inherit_weights
    from icdistill.detectors import build_model
    from icdistill.files import load_checkpoint

    cfg, classes = run.cfg, load_checkpoint(run.teacher_pt)["num_classes"]
    bare = lambda m: dataclasses.replace(m, weights=None, backbone_weights=None)  # noqa: E731
    report = inherit_weights(build_model(bare(cfg.teacher), classes, "teacher"), build_model(bare(cfg.model), classes, "model"))
    print(f"inheriting rows: {report.summary(3)}")
    return None if report.copied else f"no neck/head tensor of the teacher fits the student ({report.summary(3)})"


def thread_layout(jobs: int) -> dict[str, int]:
    """Threads: $OMP_NUM_THREADS or the CPU count for the teacher, split evenly over the jobs."""
    total = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    return {"jobs": jobs, "threads_per_job": max(1, total // jobs), "teacher_threads": total}


def execute(args: argparse.Namespace, teacher: Run, students: list[Run], started: float,
            group: Callable[[Run], Any] = lambda run: run.seed) -> dict[str, Any]:
    """Train (or reuse) the teacher alone, then the students (``--jobs`` at a time), printing one
    line per run; returns the teacher's metrics, the students' aggregates (with the machine type
    of each seed's run) and what was skipped. ``group``: which runs are compared with each other
    (:func:`schedule`)."""
    layout, counts, progress = thread_layout(args.jobs), {"cached": 0, "trained": 0}, sys.stderr.isatty()

    def report(run: Run, state: str) -> None:
        m, done = read_metrics(run), {"fresh": "trained", "resume": "resumed"}.get(state, state)
        counts["trained" if state in TRAINED else "cached"] += 1
        ap = "n/a" if m.get("bbox/AP") is None else f"{m['bbox/AP']:.1f}"
        print(f"[{args.suite}] {run.name:<14} seed {'-' if run.seed is None else run.seed}: {done:<7} AP {ap}, "
              f"{m.get('time/iter_s')} s/iter, elapsed {time.perf_counter() - started:.0f} s", flush=True)

    def call(run: Run, state: str, threads: int) -> tuple[Any, ...]:
        return str(run.recipe), run.overrides, str(run.out), state == "resume", threads

    records, machine = run_records(args, teacher.out.parent), hardware()

    def keep(run: Run, state: str, is_teacher: bool = False) -> None:
        """Record a run that finished here, or one cached here that has no record yet."""
        if records is not None and (state in TRAINED or records.provenance(run.out) is None):
            records.save(run.out, machine, teacher=is_teacher)

    state = prepare(teacher, records)
    if state in TRAINED:
        train_run(*call(teacher, state, layout["teacher_threads"]), progress)
    report(teacher, state)
    keep(teacher, state, is_teacher=True)
    skipped, inherit = {}, next((r for r in students if r.name.endswith(INHERIT)), None)
    if inherit is not None:
        reason = inherit_skip_reason(inherit)
        for name in dict.fromkeys(r.name for r in students if r.name.endswith(INHERIT) and reason):
            skipped[name] = reason
            print(f"skipping {name}: {reason}")
    runs = [r for r in students if r.name not in skipped]
    elsewhere, this = set(), machine_type(machine)
    if records is not None and getattr(args, "redo_elsewhere", False):
        # run_machine is this machine's type for a run without a record, so only recorded runs qualify
        elsewhere = {r.out for r in runs if run_machine(r, records, machine) != this}
        for out in elsewhere:
            shutil.rmtree(out, ignore_errors=True)  # a restored copy would count as cached
        if elsewhere:
            print(f"--redo-elsewhere: {len(elsewhere)} student run(s) recorded on another machine type than this "
                  f"one ({this}) train again here; their records are replaced", flush=True)
    states = {r.out: prepare(r, None if r.out in elsewhere else records) for r in runs}
    for r in (r for r in runs if states[r.out] not in TRAINED):
        report(r, states[r.out])
        keep(r, states[r.out])
    todo = schedule([r for r in runs if states[r.out] in TRAINED], runs, states, records, machine, group)
    if args.jobs == 1:
        for r in todo:
            train_run(*call(r, states[r.out], layout["threads_per_job"]), progress)
            report(r, states[r.out])
            keep(r, states[r.out])
    else:
        with cf.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=die_with_parent) as pool:
            futures = {pool.submit(train_run, *call(r, states[r.out], layout["threads_per_job"]), False): r
                       for r in todo}
            try:
                for fut in cf.as_completed(futures):
                    fut.result()
                    report(futures[fut], states[futures[fut].out])
                    keep(futures[fut], states[futures[fut].out])
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    names = list(dict.fromkeys(r.name for r in runs))
    provenance = {} if records is None else {
        str(r.out.relative_to(teacher.out.parent)): records.provenance(r.out) for r in [teacher, *runs]}
    students = {}
    for n in names:
        mine = [r for r in runs if r.name == n]
        students[n] = {**aggregate([read_metrics(r) for r in mine]),
                       "machines": [run_machine(r, records, machine) for r in mine]}
    return {"teacher": read_metrics(teacher), "skipped": skipped, "layout": layout, "counts": counts,
            "provenance": provenance, "students": students}


def machine_type(hardware: dict[str, Any]) -> str:
    """The machine type a run's numbers depend on: the GPU's name, else the CPU's name with its
    family/model numbers and torch's instruction set. Two sittings both called "AMD EPYC" gave
    35.7 and 36.4 AP from one recipe and seed (docs/RESULTS.md), so the name alone is not a type;
    a record made before these details were kept is of a type of its own."""
    if hardware.get("gpu"):
        return str(hardware["gpu"])
    if "cpu_id" not in hardware:
        return f"{hardware.get('processor')} (details not recorded)"
    return f"{hardware.get('processor')} ({hardware.get('cpu_id') or 'unknown family'}, {hardware.get('cpu_isa')})"


def run_machine(run: Run, records: Records | None, here: dict[str, Any]) -> str:
    """The machine type a finished run was trained on: its record's, else this machine's."""
    rec = records.provenance(run.out) if records is not None else None
    return machine_type(rec["hardware"] if rec else here)


def schedule(todo: list[Run], runs: list[Run], states: dict[Path, str], records: Records | None,
             here: dict[str, Any], group: Callable[[Run], Any]) -> list[Run]:
    """The runs to train, those of a group (runs compared with each other: one seed of every row
    for accuracy.py) already trained on another machine type last, and said so.

    A suite spans sittings, and sittings get different machines: a run trained here beside a
    group trained elsewhere cannot be paired with it, so the groups that can still be completed
    on this machine type go first and the mixed ones wait (a later sitting on their machine type
    finds them still to do, or they run last here)."""
    if records is None:
        return todo
    this = machine_type(here)
    elsewhere = {group(r) for r in runs if states[r.out] not in TRAINED and run_machine(r, records, here) != this}
    late = [r for r in todo if group(r) in elsewhere]
    if late:
        print(f"{len(late)} run(s) belong to groups already trained on another machine type than this one ({this}); "
              "they run last, and their pairs count only where both runs share a machine type", flush=True)
    return [r for r in todo if group(r) not in elsewhere] + late


def curves(runs: list[Run]) -> dict[int, list[float]]:
    """Student iteration -> box AP of each seed, from the periodic evaluations in metrics.jsonl
    (global iterations minus the ICD decoder warm-up) and the final metrics.json."""
    points: dict[int, list[float]] = {}
    for run in runs:
        cfg = run.cfg
        offset = cfg.distill.icd.decoder_warmup_iters if cfg.distill.method == "icd" else 0
        for line in (run.out / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("eval/bbox/AP") is not None:
                points.setdefault(rec["iter"] - offset, []).append(rec["eval/bbox/AP"])
        final = read_metrics(run).get("bbox/AP")
        if final is not None:
            points.setdefault(cfg.solver.max_iter, []).append(final)
    return dict(sorted(points.items()))


def plot(path: Path, suite: str, students: list[Run], teacher_ap: float | None) -> Path:
    """Mean box AP over seeds against student iteration (min-max band), the teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r.name for r in students):
        pts = curves([r for r in students if r.name == name])
        xs = list(pts)
        ax.plot(xs, [statistics.fmean(v) for v in pts.values()], marker="o", label=name)
        ax.fill_between(xs, [min(v) for v in pts.values()], [max(v) for v in pts.values()], alpha=0.2)
    if teacher_ap is not None:
        ax.axhline(teacher_ap, color="k", linestyle="--", label="teacher (final)")
    ax.set(xlabel="student iteration", ylabel="box AP (%)", title=f"{suite}: mean over seeds, min-max band")
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def compare_page(out: Path, runs: list[Run]) -> Path:
    """``<out>/compare.html`` of the suite's runs (icdistill compare: the table with the share of
    the teacher–baseline gap each student closes, baseline of the same seed; curves overlaid)."""
    from icdistill.reporting import write_compare

    page, _ = write_compare([r.out for r in runs], out)
    print(f"compare page: {page}")
    return page


def describe(run: Run) -> str:
    """A table row's model, e.g. ``fcos mobilenet_v2, 250 it + 80 decoder warm-up``."""
    cfg = run.cfg
    warm = cfg.distill.icd.decoder_warmup_iters if cfg.distill.method == "icd" else 0
    return f"{cfg.model.family} {cfg.model.backbone}, {cfg.solver.max_iter} it" + (f" + {warm} decoder warm-up" if warm else "")


def hardware() -> dict[str, Any]:
    """The machine, for the JSON and RESULTS.md: besides the CPU's name, its family and model
    numbers (``cpu_id``; cloud VMs name every AMD generation "AMD EPYC") and the instruction set
    torch dispatches its kernels to (``cpu_isa``, e.g. AVX512), which decide the float results."""
    cpu, cpu_id = platform.processor(), None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        fields = dict(ln.split(":", 1) for ln in cpuinfo.read_text().split("\n\n")[0].splitlines() if ":" in ln)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        cpu = fields.get("model name", cpu)
        if "cpu family" in fields and "model" in fields:
            cpu_id = f"family {fields['cpu family']} model {fields['model']}"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"machine": platform.machine(), "processor": cpu, "cpu_id": cpu_id,
            "cpu_isa": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}


def cell(data: dict[str, Any], key: str) -> str:
    """``mean ± std`` (one decimal; time three) of an aggregate, or a plain teacher value."""
    mean, std = (data["mean"].get(key, "-"), data["std"].get(key)) if "mean" in data else (data.get(key, "-"), None)
    if mean is None or mean == "-":
        return "n/a" if mean is None else "-"
    digits = 3 if key == "time/iter_s" else (0 if key in ("time/train_s", "time/method_stage_s") else 1)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def column_name(key: str) -> str:
    """``bbox/AP50`` -> ``AP50``, ``segm/AP`` -> ``mask AP``, ``time/iter_s`` -> ``s/iter``."""
    name = key.split("/")[-1].replace("iter_s", "s/iter").replace("train_s", "train s").replace(
        "method_stage_s", "stage s")
    return f"mask {name}" if key.startswith("segm/") else name


def canonical_order(by_row: dict[str, Any]) -> dict[str, Any]:
    """``by_row`` in ``STUDENTS`` order (baseline first), whatever order ``--students`` gave;
    unknown rows last, as given."""
    rank = {name: i for i, name in enumerate(STUDENTS)}
    return dict(sorted(by_row.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def row_label(name: str, meta: dict[str, Any]) -> str:
    """A table row's name and model; ``[ADAPT]`` where the method's form on this detector family is
    this project's adaptation (the method's own declaration in the registry, e.g. Mimic, FGFI and
    Chen 2017 on RetinaNet/FCOS; docs/method.md)."""
    model = meta["models"].get(name, "")
    method = STUDENTS[name].method if name in STUDENTS else name
    family = model.split(" ", 1)[0]
    adapted = (method in method_names() and family in FAMILIES
               and support_label(method_spec(method), family) == ADAPT)
    return f"{name}{' [ADAPT]' if adapted else ''} ({model})"


def paired_differences(students: dict[str, Any], references: Sequence[str] = REFERENCES) -> dict[str, Any]:
    """Per row, per reference row: the paired box-AP difference over the seeds both ran (seed i of
    every row is the same seed: rows are aggregated in the seeds' order) with its 95 % interval.

    A seed is a pair only where both runs were trained on one machine type (``machines``, when
    the aggregates have them): the same recipe and seed give other numbers on another CPU, so a
    cross-machine difference would mix the machine into the method. ``n`` counts the pairs used."""
    ap = {n: [s.get("bbox/AP") for s in d["seeds"]] for n, d in students.items()}
    machines = {n: d.get("machines") or [None] * len(d["seeds"]) for n, d in students.items()}

    def same_machine(row: str, ref: str) -> list[float | None]:
        return [a if ma == mb else None for a, ma, mb in zip(ap[row], machines[row], machines[ref])]

    return {n: {ref: paired_interval(same_machine(n, ref), ap[ref]) for ref in references if ref in ap and ref != n}
            for n in ap}


def machine_types(meta: dict[str, Any]) -> list[str]:
    """The machine types (:func:`machine_type`) the table's student runs were trained on: the
    records' where runs come from records, else this machine's. The teacher is left out: its
    weights are one input of every row, so its machine does not enter the pairs."""
    seen = {machine_type(rec["hardware"]) for name, rec in (meta.get("provenance") or {}).items()
            if rec and name != TEACHER_FOLDER}
    return sorted(seen) or [machine_type(meta["hardware"])]


def pair_cell(result: dict[str, Any], seeds: int) -> str:
    """An interval, and how many pairs it rests on when fewer than the seeds (pairs on different
    machine types or missing runs dropped)."""
    text = describe_interval(result)
    return text + (f" ({result['n']} of {seeds} pairs)" if result["n"] < seeds and result["mean"] is not None else "")


def paired_lines(data: dict[str, Any]) -> list[str]:
    """The paired-difference table (row − baseline, row − ICD) and the machine note."""
    paired, machines = data.get("paired") or {}, machine_types(data["meta"])
    refs = [r for r in data["meta"].get("references", REFERENCES) if r in data["students"]]
    if not refs or len(data["meta"]["seeds"]) < 2:
        return []
    lines = ["", f"Paired differences in box AP, seed by seed (every row of one seed starts from the same weights "
                 f"and sees the same student batches), mean and 95 % interval (paired t, {len(data['meta']['seeds'])} "
                 "seeds); a row is better or worse only where its interval excludes 0 (\"resolved\").", "",
             "| row | " + " | ".join(f"− {r}" for r in refs) + " |", "| --- |" + " --- |" * len(refs)]
    seeds = len(data["meta"]["seeds"])
    for name in canonical_order(data["students"]):
        cells = [pair_cell(paired[name][r], seeds) if r in paired.get(name, {}) else "" for r in refs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(machines) > 1:
        lines += ["", f"**WARNING: these rows were trained on different machine types ({'; '.join(machines)}).** "
                      "The same recipe and seed give other numbers on another machine, so a seed counts as a "
                      "pair only where both runs share a machine type (a cell says how many pairs it has when "
                      "that is fewer than the seeds); rerun the mixed seeds on one machine type to use them."]
    else:
        lines += ["", f"Every run on one machine type: {machines[0]}."]
    return lines


def target_checks(data: dict[str, Any]) -> list[str]:
    """The issue's targets, each with its verdict."""
    ap = {k: v["mean"].get("bbox/AP") for k, v in data["students"].items()}
    teacher, base = data["teacher"].get("bbox/AP"), ap.get("baseline")
    icd_vs = (data.get("paired") or {}).get("icd", {})
    checks = []
    if "baseline" in icd_vs and icd_vs["baseline"]["mean"] is not None:
        low = icd_vs["baseline"]["low"]
        checks.append(f"ICD − baseline {describe_interval(icd_vs['baseline'])} (target: interval above 0: "
                      f"{'met' if low is not None and low > 0 else 'not met'})")
    if None not in (teacher, base) and teacher != base:
        checks += [f"{k} closes {(ap[k] - base) / (teacher - base):.0%} of the teacher–baseline gap"
                   for k in ("icd", "icd_inherit") if ap.get(k) is not None]
    flagged = [k for k, v in ap.items() if teacher_is_weaker(v, teacher)]
    checks += [f"teacher weaker than {', '.join(flagged)} (a weaker teacher has little to teach)"] if flagged else []
    below = [k for k, v in ap.items() if k in STUDENTS and STUDENTS[k].method != "none" and below_baseline(v, base)]
    checks += [f"below the baseline on the mean: {', '.join(below)}"] if below else []
    return checks


def results_section(data: dict[str, Any], png: str) -> str:
    """The suite's Markdown section for docs/RESULTS.md (between its markers)."""
    meta, st = data["meta"], data["students"]
    hw, lay = meta["hardware"], meta["layout"]
    columns = table_keys(data)
    split = meta.get("split", "test")
    named = meta.get("key") not in (None, meta["suite"], f"{meta['suite']}_validation")
    title = (f"### {meta['suite']}" + (f" — {meta['key']}" if named else "")
             + (" — validation split (for choosing hyperparameters; not a test result)" if split == "validation" else ""))
    splits = meta.get("splits")
    lines = [title, "", *([f"Trained on {splits['train']}, evaluated on {splits['evaluated on']}."] if splits else []),
             f"Command: `{meta['command']}` on {hw['machine']} {hw['processor']}, {hw['cpu_count']} CPUs, "
             f"{'GPU ' + hw['gpu'] if hw['gpu'] else 'no GPU'}, torch {hw['torch']}, {meta['date']}; "
             f"{lay['jobs']} job(s) x {lay['threads_per_job']} thread(s) (teacher: {lay['teacher_threads']}). "
             f"Wall time {meta['wall_s'] / 60:.1f} min ({meta['runs_trained']} runs trained, "
             f"{meta['runs_cached']} reused). {recorded_clause(meta)}Seeds {', '.join(map(str, meta['seeds']))}; "
             f"recipes {', '.join(f'`{v}`' for v in meta['recipes'].values())}; "
             f"evaluator `{meta['evaluator']}`. {rule_clause(meta)}Mean ± sample std over seeds. s/iter = training seconds of the "
             "student's iterations / their number, evaluation excluded; a method-only stage (ICD's decoder "
             "warm-up, no student step) is in its own column, stage s. [ADAPT]: the method's form on this "
             "detector family is this project's adaptation (docs/method.md).", "",
             "| model | " + " | ".join(column_name(k) for k in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for name, d in [("teacher", data["teacher"]), *canonical_order(st).items()]:
        lines.append(f"| {row_label(name, meta)} | " + " | ".join(cell(d, k) for k in columns) + " |")
    lines += [f"\nSkipped: {k}: {v}." for k, v in meta["skipped"].items()]
    lines += paired_lines(data)
    rows = meta.get("rows") or {}
    if rows:
        lines += ["", "Rows: " + "; ".join(
            f"{k} = `{v['recipe']}`" + "".join(f" `{x}`" for x in v["sets"])
            + (f" (λ {v['loss_weight']:g}{', from the sweep' if v['loss_weight_from'] == 'sweep' else ''})"
               if v["loss_weight"] is not None else "") for k, v in canonical_order(rows).items()) + "."]
    checks = target_checks(data)
    lines += ["", "Targets: " + "; ".join(checks) + "." if checks else "", "", f"![AP vs iteration]({png})"]
    return "\n".join(lines).rstrip() + "\n"


def write_results(section: str, suite: str, path: Path = RESULTS) -> None:
    """Replace the suite's section between its markers, or add it (with the heading if absent)."""
    begin, end = f"<!-- accuracy benchmark {suite}: begin -->", f"<!-- accuracy benchmark {suite}: end -->"
    block = f"{begin}\n{section}{end}"
    text = path.read_text()
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        if "## Accuracy benchmark" not in text:
            block = "## Accuracy benchmark\n\n" + block
        ends = list(re.finditer(r"<!-- accuracy benchmark \S+: end -->", text))
        at = ends[-1].end() if ends else (text.index("## Not measured here") if "## Not measured here" in text else len(text))
        text = text[:at].rstrip("\n") + "\n\n" + block + "\n\n" + text[at:].lstrip("\n")
    path.write_text(text.rstrip("\n") + "\n")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options every benchmark built on these runs shares (accuracy, sweep, variance)."""
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--eval-period", type=int, help="default: the student recipe's max_iter // 5")
    p.add_argument("--bccd-root", default=str(ROOT.parent / "shared" / "data" / "bccd"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--quick", action="store_true", help="smoke run on tiny data and schedules")
    p.add_argument("--no-results", action="store_true", help="do not touch docs/")
    p.add_argument("--results", action="store_true", help="with --quick: write docs/ all the same")


def add_record_args(p: argparse.ArgumentParser) -> None:
    """``--records DIR`` / ``--no-records`` (shared with sweep.py)."""
    p.add_argument("--records", type=Path, metavar="DIR",
                   help="run records to reuse and write (default: benchmarks/records/<out folder>; none with --quick)")
    p.add_argument("--no-records", action="store_true", help="neither reuse nor write run records")
    p.add_argument("--redo-elsewhere", action="store_true",
                   help="train again here every student run whose record was made on another machine type (its "
                        "record is replaced), so the table comes from this machine type; the teacher is kept")


def check_key(p: argparse.ArgumentParser, key: str | None) -> None:
    """``--key`` (shared with variance.py) names a file and a RESULTS marker: a plain word only."""
    if key is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        p.error(f"--key {key!r}: use letters, digits, '_', '.', '-' (it names a file and a RESULTS marker)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(SUITES), required=True)
    p.add_argument("--students", nargs="+", choices=list(STUDENTS), help="default: the suite's rows (SUITES)")
    p.add_argument("--seeds", nargs="+", type=int, help="default: the suite's (0 1 2; C4/DC5: 0; --quick: 0 1)")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="validation: train on a training part, evaluate on held-out training images")
    p.add_argument("--weights-from", type=Path, metavar="SWEEP_JSON", help="the distillation weight per row from a sweep")
    p.add_argument("--references", nargs="+", choices=list(STUDENTS), default=list(REFERENCES),
                   help="the rows every row is paired against (a column each; default: baseline icd)")
    add_rule_args(p)
    p.add_argument("--key", help="the name of the RESULTS section and plot (default: the suite[_validation]); "
                                 "another name keeps a separate comparison beside the suite's table")
    add_run_args(p)
    add_record_args(p)
    args = p.parse_args(argv)
    check_rule_args(p, args)
    suite = SUITES[args.suite]
    args.students = args.students or list(suite.rows)
    args.seeds = args.seeds or ([0, 1] if args.quick and len(suite.seeds) > 1 else list(suite.seeds))
    check_key(p, args.key)
    args.key = args.key or args.suite + "_validation" * (args.split == "validation")  # the RESULTS / PNG name
    return args


def recorded_on(provenance: dict[str, Any]) -> list[str]:
    """Where and when the suite's runs were trained, e.g. ``["2026-12-02, AMD EPYC 7B13 (14 runs)"]``."""
    seen: dict[str, int] = {}
    for rec in provenance.values():
        if rec:
            key = f"{rec['recorded']}, {machine_type(rec['hardware'])}"
            seen[key] = seen.get(key, 0) + 1
    return [f"{k} ({n} run{'s' * (n > 1)})" for k, n in sorted(seen.items())]


def recorded_clause(meta: dict[str, Any]) -> str:
    """The sentence saying when and where the table's runs were trained, when that was not all in
    this call (runs reused from records of earlier calls); else ''."""
    if not meta.get("runs_cached") or not meta.get("recorded_on"):
        return ""
    return f"Runs trained on: {'; '.join(meta['recorded_on'])}. "


def run_records(args: argparse.Namespace, out: Path) -> Records | None:
    """The suite folder's run records (benchmarks/records.py) in ``benchmarks/records/<out name>``,
    or ``--records DIR``; none for ``--quick`` (unless ``--records``) or with ``--no-records``."""
    root = getattr(args, "records", None)
    if getattr(args, "no_records", False) or (root is None and args.quick):
        return None
    subs = {str(out): "${OUT}", str(ROOT): "${ROOT}", str(Path(args.bccd_root).resolve()): "${DATA}"}
    return Records(Path(root or RECORDS / out.name).resolve(), out, subs)


def default_out(args: argparse.Namespace) -> Path:
    """``benchmark_out/accuracy/<suite>[-validation][-quick]``."""
    name = args.suite + "-validation" * (args.split == "validation") + "-quick" * args.quick
    return (args.out or ROOT / "benchmark_out" / "accuracy" / name).resolve()


def row_meta(plan: Plan, runs: list[Run]) -> dict[str, Any]:
    """Per student row: its recipe, extra overrides, where they come from and its loss weight."""
    meta = {}
    for run in runs:
        if run.name in meta or run.name not in STUDENTS:
            continue
        recipe, extra, source = row_recipe(plan.suite, run.name)
        meta[run.name] = {"recipe": str(recipe.relative_to(RECIPES.parent)), "sets": extra, "source": source,
                          "loss_weight": default_loss_weight(run.cfg),
                          "loss_weight_from": "sweep" if plan.weights.get(run.name, plan.weights.get(
                              STUDENTS[run.name].method)) is not None else "recipe"}
    return meta


def warn_about_machines(meta: dict[str, Any]) -> None:
    """Say loudly, on stderr, when the runs come from different machine types."""
    machines = machine_types(meta)
    if len(machines) > 1:
        print(f"accuracy.py: WARNING: the runs come from different machine types ({'; '.join(machines)}); "
              "paired differences across them are not trustworthy: rerun on one machine type", file=sys.stderr)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out, started = default_out(args), time.perf_counter()
    plan = make_plan(args, out)
    teacher, students = plan.teacher(), student_runs(plan, args.students, args.seeds)
    res = execute(args, teacher, students, started)
    to_docs = not args.no_results and (args.results or not args.quick)
    png = (ROOT / "docs" if to_docs else out) / f"accuracy_{args.key}.png"
    done = [r for r in students if r.name not in res["skipped"]]
    plot(png, args.key, done, res["teacher"].get("bbox/AP"))
    compare = compare_page(out, [teacher, *done])
    meta = {"suite": args.suite, "key": args.key, "references": args.references, "split": args.split,
            "rule": args.rule, "student_sets": list(plan.student_sets),
            "splits": split_names(teacher),
            "command": shlex.join(["python", "benchmarks/accuracy.py", *(sys.argv[1:] if argv is None else argv)]),
            "date": date.today().isoformat(), "hardware": hardware(), "layout": res["layout"], "seeds": args.seeds,
            "recipes": {k: str(r.relative_to(RECIPES.parent)) for k, r in suite_recipes(args.suite).items()},
            "rows": row_meta(plan, done), "weights_from": str(args.weights_from) if args.weights_from else None,
            "evaluator": teacher.cfg.eval.evaluator, "models": {r.name: describe(r) for r in [teacher, *students]},
            "quick": args.quick, "skipped": res["skipped"],
            "runs_trained": res["counts"]["trained"], "runs_cached": res["counts"]["cached"],
            "provenance": res["provenance"], "recorded_on": recorded_on(res["provenance"]),
            "wall_s": round(time.perf_counter() - started, 1), "plot": str(png), "compare": str(compare)}
    data = {"meta": meta, "teacher": res["teacher"], "students": res["students"],
            "paired": paired_differences(res["students"], args.references)}
    warn_about_machines(meta)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, allow_nan=False))
    if to_docs:
        write_results(results_section(data, png.name), args.key)
    print(f"\n{results_section(data, str(png))}")
    return data


if __name__ == "__main__":
    main()
