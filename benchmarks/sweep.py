"""Loss-weight sweep on the validation split: each method's distillation weight chosen on held-out
training images (never on test), with the same budget for every method.

    python benchmarks/sweep.py --suite bccd [--rows icd fitnet mimic ...] [--seeds 0] [--jobs 2]
            [--json docs/sweep_bccd.json] [--quick] [--no-results] [--set KEY=VALUE]
    python benchmarks/accuracy.py --suite bccd --weights-from docs/sweep_bccd.json   # then the test split

Every run is an accuracy-benchmark run of ``--split validation`` (benchmarks/accuracy.py: bccd
trains on ImageSets ``train`` and is evaluated on ``val``; synthetic on the shapes generator at
seed 1): the same teacher, the row's recipe, the method's weight (``distill.<method>.loss_weight``,
or ``distill.weight_scale`` for methods with several term weights) at each point of its grid.
Grids: every method, ICD included, its default weight (the recipe's, or the method's when the
recipe leaves it null) × {0.25, 0.5, 1, 2, 4} (``accuracy.WEIGHT_SCALES``: one meaning for every
method, a multiplier of its default, whatever the key): five points and
the same seeds for every method. The weight's key is written in one place,
``accuracy.weight_override``. The grid point equal to the default runs
the row exactly as ``accuracy.py --split validation`` does, in the same folder
(``<out>/<row>/seed<k>``), so either reuses the other's run; the others live in
``<out>/sweep/<row>/w<weight>/seed<k>``. Runs are cached / resumed as in accuracy.py.

The chosen weight of a row is the grid point with the highest mean validation box AP over the
seeds (ties: the default, then the smaller weight). Writes ``--json`` (per row the grid, per
point the seeds' AP, mean and std; ``chosen``; ``meta``), a weight-vs-AP plot and (unless
``--no-results``; ``--quick`` only with ``--results``) a section of docs/RESULTS.md and, without
``--json``, docs/sweep_<suite>.json.
``--quick`` is a smoke run on tiny data and schedules: the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # accuracy.py beside this file

import accuracy  # noqa: E402

MULTIPLIERS = accuracy.WEIGHT_SCALES  # x the row's default weight, the same for every method
# inheriting rows take their method's chosen weight: the switch changes the start, not the loss
SWEEPABLE = tuple(n for n, r in accuracy.STUDENTS.items() if r.method != "none" and not n.endswith(accuracy.INHERIT))


def grid(row: str, default: float, multipliers: list[float] | None = None) -> tuple[float, ...]:
    """The row's loss weights: ``default`` x ``multipliers`` (default :data:`MULTIPLIERS`)."""
    return tuple(default * m for m in (multipliers or MULTIPLIERS))


def label(row: str, weight: float) -> str:
    return f"{row}@{weight:g}"


def sweep_runs(plan: accuracy.Plan, rows: list[str], seeds: list[int],
               multipliers: list[float] | None = None) -> tuple[dict[str, Any], list[accuracy.Run]]:
    """Per row its default weight and grid, and every (row, weight, seed) run."""
    table, runs = {}, []
    for row in rows:
        default = accuracy.default_loss_weight(plan.student(row, seeds[0], sets=[]).cfg)
        points = grid(row, default, multipliers)
        table[row] = {"method": accuracy.STUDENTS[row].method, "default": default, "grid": list(points)}
        for w in points:
            for seed in seeds:
                if w == default:  # the validation suite's own run of the row
                    runs.append(plan.student(row, seed, sets=[], label=label(row, w)))
                else:
                    override = accuracy.weight_override(plan.student(row, seed, sets=[]).cfg, w)
                    runs.append(plan.student(row, seed, sets=[override], label=label(row, w),
                                             out=plan.out / "sweep" / row / f"w{w:g}" / f"seed{seed}"))
    return table, runs


def choose(points: list[dict[str, Any]], default: float) -> float | None:
    """The weight with the highest mean AP; ties go to the default, then to the smaller weight."""
    scored = [p for p in points if p["mean"] is not None]
    if not scored:
        return None
    best = max(p["mean"] for p in scored)
    tied = [p["loss_weight"] for p in scored if p["mean"] == best]
    return default if default in tied else min(tied)


def fill(table: dict[str, Any], runs: list[accuracy.Run], students: dict[str, Any]) -> dict[str, float | None]:
    """Adds each row's ``points`` (per weight: AP per seed, mean, std) from the runs' metrics and
    returns the chosen weight per row."""
    chosen = {}
    for row, entry in table.items():
        entry["points"] = []
        for w in entry["grid"]:
            agg = students[label(row, w)]
            seeds = {str(r.seed): m.get("bbox/AP") for r, m in zip([r for r in runs if r.name == label(row, w)],
                                                                  agg["seeds"])}
            entry["points"].append({"loss_weight": w, "bbox/AP": seeds, "mean": agg["mean"].get("bbox/AP"),
                                    "std": agg["std"].get("bbox/AP")})
        chosen[row] = entry["chosen"] = choose(entry["points"], entry["default"])
    return chosen


def plot(path: Path, suite: str, table: dict[str, Any]) -> Path:
    """Mean validation AP against the loss weight (log scale, x the default = 1 for the peers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, entry in table.items():
        pts = [(p["loss_weight"] / entry["default"], p["mean"]) for p in entry["points"] if p["mean"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{row} (default λ {entry['default']:g})")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="loss weight / default weight", ylabel="validation box AP (%)",
           title=f"{suite}: loss-weight sweep on the validation split, mean over seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def section(data: dict[str, Any], png: str) -> str:
    """The sweep's Markdown section for docs/RESULTS.md."""
    meta, hw = data["meta"], data["meta"]["hardware"]
    points = max(len(e["grid"]) for e in data["rows"].values())
    lines = [f"### {meta['suite']} — loss-weight sweep (validation split: trained on {meta['splits']['train']}, "
             f"evaluated on {meta['splits']['evaluated on']}; never test)", "",
             f"Command: `{meta['command']}` on {hw['machine']} {hw['processor']}, {hw['cpu_count']} CPUs, "
             f"{'GPU ' + hw['gpu'] if hw['gpu'] else 'no GPU'}, torch {hw['torch']}, {meta['date']}. Wall time "
             f"{meta['wall_s'] / 60:.1f} min ({meta['runs_trained']} runs trained, {meta['runs_cached']} reused). "
             f"{accuracy.recorded_clause(meta)}{accuracy.rule_clause(meta)}Seeds {', '.join(map(str, meta['seeds']))}; teacher box AP on the validation images "
             f"{_ap(data['teacher'].get('bbox/AP'))}. Cells: λ → validation box AP, mean ± sample std over seeds; "
             "the chosen λ is the best mean (ties: the default).", "",
             "| row | default λ | " + " | ".join(f"point {i + 1}" for i in range(points)) + " | chosen λ |",
             "| --- | ---: |" + " ---: |" * points + " ---: |"]
    for row, e in data["rows"].items():
        cells = [f"{p['loss_weight']:g} → {_ap(p['mean'])}" + (f" ± {p['std']:.1f}" if p["std"] else "")
                 for p in e["points"]]
        chosen = "n/a" if e["chosen"] is None else f"**{e['chosen']:g}**"
        lines.append(f"| {row} | {e['default']:g} | " + " | ".join(cells + [""] * (points - len(cells))) + f" | {chosen} |")
    rule = f" --rule {meta['rule']}" + (f" --max-iter {meta['max_iter']}" if meta.get("max_iter") else "") \
        if meta.get("rule") else ""
    lines += ["", f"Use: `python benchmarks/accuracy.py --suite {meta['suite']}{rule} --weights-from "
                  f"docs/sweep_{meta['suite']}.json` (the test split with these weights).", "", f"![sweep]({png})"]
    return "\n".join(lines) + "\n"


def _ap(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(accuracy.SUITES), required=True)
    p.add_argument("--rows", nargs="+", choices=SWEEPABLE, help="default: the suite's method rows and icd")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--multipliers", nargs="+", type=float,
                   help="every row's grid = default x these (default: 0.25 0.5 1 2 4)")
    accuracy.add_rule_args(p)
    accuracy.add_run_args(p)
    accuracy.add_record_args(p)
    args = p.parse_args(argv)
    accuracy.check_rule_args(p, args)
    suite = accuracy.SUITES[args.suite]
    args.rows = args.rows or [n for n in suite.students if n in SWEEPABLE and n not in accuracy.ABLATION_ROWS]
    args.split, args.weights_from = "validation", None  # what accuracy.py's planning reads
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out, started = accuracy.default_out(args), time.perf_counter()
    plan = accuracy.make_plan(args, out)
    table, runs = sweep_runs(plan, args.rows, args.seeds, args.multipliers)
    # a row's grid points are compared with each other: they go on one machine type where they can
    res = accuracy.execute(args, plan.teacher(), runs, started, group=lambda run: run.name.split("@")[0])
    chosen = fill(table, runs, res["students"])
    to_docs = not args.no_results and (args.results or not args.quick)
    png = plot((accuracy.ROOT / "docs" if to_docs else out) / f"sweep_{args.suite}.png", args.suite, table)
    meta = {"suite": args.suite, "split": "validation", "splits": accuracy.split_names(plan.teacher()),
            "command": shlex.join(["python", "benchmarks/sweep.py", *(sys.argv[1:] if argv is None else argv)]),
            "date": date.today().isoformat(), "hardware": accuracy.hardware(), "seeds": args.seeds,
            "rule": args.rule, "max_iter": args.max_iter, "student_sets": list(plan.student_sets),
            "multipliers": args.multipliers or list(MULTIPLIERS), "grids": {k: v["grid"] for k, v in table.items()},
            "quick": args.quick, "runs_trained": res["counts"]["trained"], "runs_cached": res["counts"]["cached"],
            "provenance": res["provenance"], "recorded_on": accuracy.recorded_on(res["provenance"]),
            "wall_s": round(time.perf_counter() - started, 1), "plot": str(png), "out": str(out)}
    data = {"meta": meta, "teacher": res["teacher"], "rows": table, "chosen": chosen}
    path = args.json or (accuracy.ROOT / "docs" / f"sweep_{args.suite}.json" if to_docs else None)
    if path:
        path.write_text(json.dumps(data, indent=2, allow_nan=False))
    if to_docs:
        accuracy.write_results(section(data, png.name), f"sweep_{args.suite}")
    print(f"\n{section(data, str(png))}")
    print("chosen: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:g}'}" for k, v in chosen.items()))
    return data


if __name__ == "__main__":
    main()
