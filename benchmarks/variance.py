"""Which training rule ends where it should? The baseline's seed-to-seed spread and the
run-to-run difference of one recipe and seed, per candidate rule, on the VALIDATION split.

    python benchmarks/variance.py --suite bccd [--rules step step_ema cosine cosine_ema]
            [--seeds 0 1 2 3 4] [--max-iter 500] [--jobs 2] [--json docs/variance_bccd.json]
            [--quick] [--no-results] [--set KEY=VALUE]

A method can only be told apart from the baseline when the baseline's own noise is smaller than
the effect. This benchmark measures that noise for each candidate rule (``RULES``): the baseline
student (the suite's student recipe, no teacher involved) trained at ``--seeds`` with the rule's
``solver.*`` settings, plus a second run of the first seed (the same recipe and seed: any
difference is the machine's nondeterminism, not the seed's). Every run is an accuracy-benchmark
run of ``--split validation`` (bccd: trained on ImageSets ``train``, evaluated on ``val``; never
test) and lives in ``<out>/variance/<rule>/seed<k>[-repeat]``, cached, resumed and recorded in
``benchmarks/records/<out folder>`` like the other benchmarks' runs (so the suite can be finished
over several sittings). The accuracy benchmark's planning trains (or reuses) the validation
teacher first, shared with the sweep.

``--max-iter`` (default 500: about 9 minutes per run on one core of the machines in
docs/RESULTS.md at ~1.06 s per iteration) sets every rule's schedule; ``--quick`` keeps the
smoke schedule. The EMA rules average over about a quarter of the schedule: decay
``1 - 4 / max_iter`` with the warm-up time constant ``max_iter / 10`` (a long schedule's 0.9998 and
2000 would average nothing in 500 iterations): this benchmark's choice.

Writes ``--json`` (per rule the seeds' AP, mean, sample std, the repeat's difference; ``meta``)
and (unless ``--no-results``; ``--quick`` only with ``--results``) the ``variance_<suite>``
section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # accuracy.py beside this file

import accuracy  # noqa: E402

RULES = accuracy.RULES
REPEAT = "-repeat"
rule_sets = accuracy.rule_sets  # the --set values of a rule (shared with accuracy.py's and sweep.py's --rule)


def variance_runs(plan: accuracy.Plan, rules: list[str], seeds: list[int], max_iter: int | None) -> list[accuracy.Run]:
    """Per rule the baseline at every seed and a repeat of the first seed."""
    runs = []
    for rule in rules:
        sets, folder = rule_sets(rule, max_iter), plan.out / "variance" / rule
        runs += [plan.student("baseline", s, sets=sets, label=rule, out=folder / f"seed{s}") for s in seeds]
        runs.append(plan.student("baseline", seeds[0], sets=sets, label=rule + REPEAT,
                                 out=folder / f"seed{seeds[0]}{REPEAT}"))
    return runs


def summarise(rules: list[str], seeds: list[int], students: dict[str, Any]) -> dict[str, Any]:
    """Per rule: AP per seed, mean, sample std over seeds, and repeat − first run of the first seed."""
    table = {}
    for rule in rules:
        aps = [m.get("bbox/AP") for m in students[rule]["seeds"]]
        repeat = students[rule + REPEAT]["seeds"][0].get("bbox/AP")
        finite = [a for a in aps if a is not None]
        table[rule] = {"bbox/AP": dict(zip(map(str, seeds), aps)),
                       "mean": statistics.fmean(finite) if finite else None,
                       "seed_std": statistics.stdev(finite) if len(finite) > 1 else None,
                       "repeat_diff": None if None in (repeat, aps[0]) else repeat - aps[0]}
    return table


def section(data: dict[str, Any]) -> str:
    """The Markdown section for docs/RESULTS.md."""
    meta, hw = data["meta"], data["meta"]["hardware"]
    fmt = lambda v, sign="": "n/a" if v is None else f"{v:{sign}.2f}"  # noqa: E731
    lines = [f"### {meta['suite']} — training-rule variance (validation split: trained on "
             f"{meta['splits']['train']}, evaluated on {meta['splits']['evaluated on']}; never test)", "",
             f"Command: `{meta['command']}` on {hw['machine']} {hw['processor']}, {hw['cpu_count']} CPUs, "
             f"{'GPU ' + hw['gpu'] if hw['gpu'] else 'no GPU'}, torch {hw['torch']}, {meta['date']}. Wall time "
             f"{meta['wall_s'] / 60:.1f} min ({meta['runs_trained']} runs trained, {meta['runs_cached']} reused). "
             f"{accuracy.recorded_clause(meta)}Baseline student, seeds {', '.join(map(str, meta['seeds']))}, "
             f"{meta['max_iter'] or 'the recipe'}'s iterations. Seed std: sample std of box AP over the seeds; "
             "repeat: a second run of the first seed minus the first (0 = deterministic).", "",
             "| rule | settings | AP per seed | mean | seed std | repeat |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for rule, row in data["rules"].items():
        per_seed = " / ".join(fmt(v) for v in row["bbox/AP"].values())
        settings = " ".join(f"`{s}`" for s in meta["settings"][rule])
        lines.append(f"| {rule} | {settings} | {per_seed} | {fmt(row['mean'])} | {fmt(row['seed_std'])} | "
                     f"{fmt(row['repeat_diff'], '+')} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(accuracy.SUITES), required=True)
    p.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    p.add_argument("--seeds", nargs="+", type=int, default=list(accuracy.SEEDS))
    p.add_argument("--max-iter", type=int, default=500, help="every rule's schedule (ignored with --quick)")
    accuracy.add_run_args(p)
    accuracy.add_record_args(p)
    args = p.parse_args(argv)
    args.split, args.weights_from = "validation", None  # what accuracy.py's planning reads
    args.max_iter = None if args.quick else args.max_iter
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out, started = accuracy.default_out(args), time.perf_counter()
    plan = accuracy.make_plan(args, out)
    runs = variance_runs(plan, args.rules, args.seeds, args.max_iter)
    # a rule's seeds are compared with each other: they go on one machine type where they can
    res = accuracy.execute(args, plan.teacher(), runs, started, group=lambda run: run.name.removesuffix(REPEAT))
    meta = {"suite": args.suite, "split": "validation", "splits": accuracy.split_names(plan.teacher()),
            "command": shlex.join(["python", "benchmarks/variance.py", *(sys.argv[1:] if argv is None else argv)]),
            "date": date.today().isoformat(), "hardware": accuracy.hardware(), "seeds": args.seeds,
            "max_iter": args.max_iter, "settings": {r: rule_sets(r, args.max_iter) for r in args.rules},
            "quick": args.quick, "runs_trained": res["counts"]["trained"], "runs_cached": res["counts"]["cached"],
            "provenance": res["provenance"], "recorded_on": accuracy.recorded_on(res["provenance"]),
            "machines": accuracy.machine_types({"provenance": res["provenance"], "hardware": accuracy.hardware()}),
            "wall_s": round(time.perf_counter() - started, 1), "out": str(out)}
    data = {"meta": meta, "rules": summarise(args.rules, args.seeds, res["students"])}
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, allow_nan=False))
    if not args.no_results and (args.results or not args.quick):
        accuracy.write_results(section(data), f"variance_{args.suite}")
    print(f"\n{section(data)}")
    return data


if __name__ == "__main__":
    main()
