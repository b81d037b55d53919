"""Which training rule ends where it should? The baseline's seed-to-seed spread and the
run-to-run difference of one recipe and seed, per candidate rule, on the VALIDATION split.

    python benchmarks/variance.py --suite bccd [--rules step step_ema cosine cosine_ema]
            [--seeds 0 1 2 3 4] [--max-iter 500] [--jobs 2] [--json docs/variance_bccd.json]
            [--key NAME] [--quick] [--no-results] [--set KEY=VALUE]

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

``--max-iter`` (default 500: about 7 minutes per run, evaluations included, at ~0.7 s per
iteration with two runs of ``--jobs 2`` sharing the 2 cores of AMD EPYC family 26; ~17 minutes on
an earlier sitting's machine; docs/RESULTS.md) sets every rule's schedule; ``--quick`` keeps the
smoke schedule. The EMA rules average over about a quarter of the schedule: decay
``1 - 4 / max_iter`` with the warm-up time constant ``max_iter / 10`` (a long schedule's 0.9998 and
2000 would average nothing in 500 iterations): this benchmark's choice.

Per rule it reports the seeds' AP, mean, the sample std with its 95 % interval (chi-square: five
seeds pin a std down only to about 0.6-2.9 times its value), the repeat's difference, and the
paired difference to ``step`` (the recipe's own rule; seed by seed, as accuracy.py pairs rows).
It then names the rule the other benchmarks' ``--rule`` should use (:func:`choose`): a rule that
is not deterministic is out, so is one whose seed std is resolved higher than another's (F test
of the two variances, two-sided 5 %); of the rest, a rule resolved better than ``step`` in paired
AP, else ``step`` itself - the status quo stays unless the evidence says otherwise.

Writes ``--json`` (``rules``: per rule the numbers above; ``chosen``; ``meta``) and (unless
``--no-results``; ``--quick`` only with ``--results``) the ``variance_<suite>`` section of
docs/RESULTS.md (``--key NAME``: the section ``NAME`` instead).
"""

from __future__ import annotations

import argparse
import json
import math
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
REFERENCE_RULE = "step"  # the recipe's own schedule, no EMA: what stays unless another rule is resolved better
# F_{0.975}(df, df): a two-sided 5 % test that two rules' seed variances differ; between entries the
# next smaller df's (the conservative value), as paired.t975 does
F975_EQUAL_DF = {1: 647.79, 2: 39.00, 3: 15.44, 4: 9.605, 5: 7.146, 6: 5.820, 7: 4.995, 8: 4.433, 9: 4.026,
                 10: 3.717, 12: 3.277, 15: 2.862, 20: 2.464, 24: 2.269, 30: 2.074, 40: 1.875, 60: 1.667, 120: 1.433}
# chi-square quantiles (2.5 %, 97.5 %) for df = 1..10; beyond, the Wilson-Hilferty approximation
CHI2_95 = {1: (0.000982, 5.024), 2: (0.0506, 7.378), 3: (0.2158, 9.348), 4: (0.4844, 11.143), 5: (0.8312, 12.833),
           6: (1.2373, 14.449), 7: (1.6899, 16.013), 8: (2.1797, 17.535), 9: (2.7004, 19.023), 10: (3.2470, 20.483)}
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


def chi2_quantiles(df: int) -> tuple[float, float]:
    """The 2.5 % and 97.5 % quantiles of chi-square with ``df`` degrees of freedom."""
    if df in CHI2_95:
        return CHI2_95[df]
    cube = lambda z: df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3  # noqa: E731
    return cube(-1.959964), cube(1.959964)


def std_interval(std: float | None, n: int) -> list[float] | None:
    """95 % interval of a normal sample's std ``std`` over ``n`` values, [low, high]; None below 2."""
    if std is None or n < 2:
        return None
    low_q, high_q = chi2_quantiles(n - 1)
    return [math.sqrt((n - 1) * std ** 2 / high_q), math.sqrt((n - 1) * std ** 2 / low_q)]


def f975(df: int) -> float:
    """The 0.975 quantile of F(df, df); between table entries the next smaller df's."""
    if df < 1:
        raise ValueError(f"an F test needs at least 1 degree of freedom (2 seeds), got {df}")
    return F975_EQUAL_DF[max(k for k in F975_EQUAL_DF if k <= df)]


def steadier(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether rule ``a``'s seed std is resolved lower than ``b``'s: the ratio of their variances
    exceeds F_{0.975}(df, df) with df from the fewer seeds (two-sided 5 % F test). It treats the
    seeds as independent samples; a seed's runs under two rules share initial weights and batches,
    and where that makes them correlate positively the test is conservative."""
    n = min(len([v for v in row["bbox/AP"].values() if v is not None]) for row in (a, b))
    if n < 2 or not a["seed_std"] or b["seed_std"] is None:
        return False
    return (b["seed_std"] / a["seed_std"]) ** 2 > f975(n - 1)


def summarise(rules: list[str], seeds: list[int], students: dict[str, Any]) -> dict[str, Any]:
    """Per rule: AP per seed, mean, sample std over seeds with its 95 % interval, repeat − first
    run of the first seed, and the paired difference to :data:`REFERENCE_RULE` (when it ran)."""
    by_rule = {rule: students[rule] for rule in rules}
    paired = accuracy.paired_differences(by_rule, references=[REFERENCE_RULE])
    table = {}
    for rule in rules:
        aps = [m.get("bbox/AP") for m in students[rule]["seeds"]]
        repeat = students[rule + REPEAT]["seeds"][0].get("bbox/AP")
        finite = [a for a in aps if a is not None]
        std = statistics.stdev(finite) if len(finite) > 1 else None
        table[rule] = {"bbox/AP": dict(zip(map(str, seeds), aps)),
                       "mean": statistics.fmean(finite) if finite else None,
                       "seed_std": std, "seed_std_95": std_interval(std, len(finite)),
                       "repeat_diff": None if None in (repeat, aps[0]) else repeat - aps[0],
                       "minus_reference": paired[rule].get(REFERENCE_RULE)}
    return table


def choose(table: dict[str, Any]) -> dict[str, str]:
    """The rule the other benchmarks should run, and why.

    Out: a rule whose repeat differs from its first run (not deterministic), and one whose seed std
    is resolved higher than another remaining rule's (:func:`steadier`).
    Of the rest, the rule resolved best against :data:`REFERENCE_RULE` in paired AP; where none is,
    the reference itself when it remains (the recipe's rule stays unless the evidence says
    otherwise), else the remaining rule with the lowest seed std."""
    deterministic = [r for r, row in table.items() if row["repeat_diff"] == 0] or list(table)
    why_out = {r: "its repeat differs" for r in table if r not in deterministic}
    for r in deterministic:
        steadier_ones = [o for o in deterministic if o != r and steadier(table[o], table[r])]
        if steadier_ones:
            why_out[r] = f"seed std resolved higher than {' and '.join(steadier_ones)}'s"
    left = [r for r in deterministic if r not in why_out]
    because = f" (out: {'; '.join(f'{r}, {why}' for r, why in why_out.items())})" if why_out else ""
    better = [r for r in left if (table[r]["minus_reference"] or {}).get("resolved") and table[r]["minus_reference"]["mean"] > 0]
    if better:
        best = max(better, key=lambda r: table[r]["minus_reference"]["mean"])
        return {"rule": best, "reason": f"the deterministic rule resolved best against {REFERENCE_RULE} in paired AP{because}"}
    if REFERENCE_RULE in left:
        return {"rule": REFERENCE_RULE, "reason": "no rule is resolved better than the recipe's own in paired AP, "
                                                  f"nor steadier in seed std, so the recipe's rule stays{because}"}
    best = min(left, key=lambda r: table[r]["seed_std"] if table[r]["seed_std"] is not None else math.inf)
    return {"rule": best, "reason": f"the lowest seed std of the rules left{because}"}


def section(data: dict[str, Any]) -> str:
    """The Markdown section for docs/RESULTS.md."""
    meta, hw = data["meta"], data["meta"]["hardware"]
    fmt = lambda v, sign="": "n/a" if v is None else f"{v:{sign}.2f}"  # noqa: E731
    lines = [f"### {meta['suite']} — training-rule variance, {len(meta['seeds'])} seeds (validation split: trained on "
             f"{meta['splits']['train']}, evaluated on {meta['splits']['evaluated on']}; never test)", "",
             f"Command: `{meta['command']}` on {hw['machine']} {hw['processor']}, {hw['cpu_count']} CPUs, "
             f"{'GPU ' + hw['gpu'] if hw['gpu'] else 'no GPU'}, torch {hw['torch']}, {meta['date']}. Wall time "
             f"{meta['wall_s'] / 60:.1f} min ({meta['runs_trained']} runs trained, {meta['runs_cached']} reused). "
             f"{accuracy.recorded_clause(meta)}Baseline student, seeds {', '.join(map(str, meta['seeds']))}, "
             f"{meta['max_iter'] or 'the recipe'}'s iterations. Seed std: sample std of box AP over the seeds, "
             "[95 % interval] (chi-square); repeat: a second run of the first seed minus the first (0 = "
             f"deterministic); − {REFERENCE_RULE}: the paired difference to the recipe's rule, seed by seed (95 % "
             "interval, paired t).", "",
             f"| rule | settings | AP per seed | mean | seed std [95 %] | repeat | − {REFERENCE_RULE} (paired) |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    seeds = len(meta["seeds"])
    for rule, row in data["rules"].items():
        per_seed = " / ".join(fmt(v) for v in row["bbox/AP"].values())
        settings = " ".join(f"`{s}`" for s in meta["settings"][rule])
        spread = fmt(row["seed_std"]) + (" [{:.2f}, {:.2f}]".format(*row["seed_std_95"]) if row.get("seed_std_95") else "")
        paired = accuracy.pair_cell(row["minus_reference"], seeds) if row.get("minus_reference") else ""
        lines.append(f"| {rule} | {settings} | {per_seed} | {fmt(row['mean'])} | {spread} | "
                     f"{fmt(row['repeat_diff'], '+')} | {paired} |")
    if data.get("chosen"):
        lines += ["", f"Chosen rule: **{data['chosen']['rule']}**: {data['chosen']['reason']}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(accuracy.SUITES), required=True)
    p.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    p.add_argument("--seeds", nargs="+", type=int, default=list(accuracy.SEEDS))
    p.add_argument("--max-iter", type=int, default=500, help="every rule's schedule (ignored with --quick)")
    p.add_argument("--key", help="the RESULTS section's name (default: variance_<suite>), e.g. for a follow-up "
                                 "with more seeds on fewer rules beside the first table")
    accuracy.add_run_args(p)
    accuracy.add_record_args(p)
    args = p.parse_args(argv)
    accuracy.check_key(p, args.key)
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
    table = summarise(args.rules, args.seeds, res["students"])
    data = {"meta": meta, "rules": table, "chosen": choose(table)}
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, allow_nan=False))
    if not args.no_results and (args.results or not args.quick):
        accuracy.write_results(section(data), args.key or f"variance_{args.suite}")
    print(f"\n{section(data)}")
    return data


if __name__ == "__main__":
    main()
