"""The ``icdistill`` command line: demo | train | distill | eval | stats | export | report | compare.

User mistakes (bad config key, missing file, mismatched teacher) print one clear line and exit
with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from icdistill import __version__
from icdistill.errors import ICDistillError


def _add_config_args(parser: argparse.ArgumentParser, *, out_default: str | None = None) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--out", default=out_default, help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set solver.max_iter=100 (repeatable)",
    )


def _add_unsafe_pickle_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--allow-unsafe-pickle", action="store_true",
        help=f"let {what} load even when it needs unpickling, which can run arbitrary code: only for "
             "files whose source you trust (default: weights only, such a file is refused)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icdistill", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"icdistill {__version__}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate shapes data; train a teacher, a student and a distilled student; compare")
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="a smoke run of the same path (< 2 minutes)")

    train = sub.add_parser("train", help="train a detector without distillation")
    _add_config_args(train)
    train.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")
    _add_unsafe_pickle_arg(train, "model.weights and --resume checkpoints (sets model.allow_unsafe_pickle)")

    distill = sub.add_parser(
        "distill", help="train a student distilled from the teacher (distill.method; default: the toolkit's core method)"
    )
    _add_config_args(distill)
    distill.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")
    _add_unsafe_pickle_arg(distill, "model.weights, teacher.weights and --resume checkpoints "
                                    "(sets model.allow_unsafe_pickle and teacher.allow_unsafe_pickle)")

    ev = sub.add_parser("eval", help="evaluate a detector checkpoint on the config's test set")
    _add_config_args(ev)
    ev.add_argument("--weights", required=True, help="a run's detector.pt (or student.pt) or checkpoints/last.pt")
    _add_unsafe_pickle_arg(ev, "--weights (sets model.allow_unsafe_pickle)")

    stats = sub.add_parser("stats", help="write the training set's prior (class frequencies, box sizes)")
    _add_config_args(stats)

    export = sub.add_parser("export", help="write a trained detector as a detector file (torchvision) or ONNX")
    export.add_argument("checkpoint", metavar="RUN_OR_FILE",
                        help="a run directory, its detector.pt or a training checkpoint (checkpoints/last.pt)")
    export.add_argument("--format", dest="fmt", choices=("torchvision", "onnx"), default="torchvision",
                        help="torchvision: the detector file (default); onnx: FILE.onnx + FILE.json (how to feed it)")
    export.add_argument("--out", required=True, metavar="FILE", help="where to write the file")
    _add_unsafe_pickle_arg(export, "RUN_OR_FILE")
    export.add_argument("--score-thresh", type=float, default=None,
                        help="onnx only: score threshold baked into the file (default: the detector's model.score_thresh)")

    report = sub.add_parser("report", help="(re)write a run directory's report.html")
    report.add_argument("run_dir", help="a run directory (holds metrics.json / metrics.jsonl)")
    compare = sub.add_parser("compare", help="write compare.html of several runs and print their table")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    compare.add_argument("--out", help="folder for compare.html (default: the runs' common parent)")
    compare.add_argument("--baseline", help="the baseline run (default: the one with distill.method none)")
    compare.add_argument("--teacher", help="the teacher run (default: the run the students name as teacher.weights)")
    return parser


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path("runs") / Path(args.config).stem


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values, plus the opt-in of ``--allow-unsafe-pickle`` for both model sections."""
    if not getattr(args, "allow_unsafe_pickle", False):
        return list(args.overrides)
    return [*args.overrides, "model.allow_unsafe_pickle=true", "teacher.allow_unsafe_pickle=true"]


def _load(args: argparse.Namespace):
    from icdistill.config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args: argparse.Namespace, *, distill: bool) -> int:
    """``train`` / ``distill``: the Python API's :func:`icdistill.api.train` / ``distill``."""
    from icdistill import api

    run = api.distill if distill else api.train
    result = run(args.config, _run_dir(args), _overrides(args), resume=args.resume, progress=not args.no_progress)
    _print_metrics(result.metrics)
    print(f"run directory: {result.out_dir}")
    return 0


def _print_metrics(metrics: dict[str, float]) -> None:
    """The box metrics on one line, then the distillation method's own numbers on another."""
    keys = [k for k in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl") if k in metrics]
    print("  ".join(f"{k.split('/')[1]} {metrics[k]:.2f}" for k in keys))
    own = {k: v for k, v in metrics.items() if "/" in k and not k.startswith(("bbox/", "segm/", "time/", "teacher/"))}
    if own:
        print("  ".join(f"{k} {v:.3f}" for k, v in own.items() if isinstance(v, (int, float))))
    teacher = [k for k in ("AP", "AP50", "AP75") if isinstance(metrics.get(f"teacher/bbox/{k}"), (int, float))]
    if teacher:  # the teacher check (engine/teacher_check.py)
        print(f"teacher on {metrics.get('teacher/images')} test images: "
              + "  ".join(f"{k} {metrics[f'teacher/bbox/{k}']:.2f}" for k in teacher))


def cmd_eval(args: argparse.Namespace) -> int:
    """``eval``: the Python API's :func:`icdistill.api.evaluate`, writing ``<out>/metrics.json``."""
    from icdistill import api

    result = api.evaluate(args.config, args.weights, _run_dir(args), _overrides(args), progress=not args.no_progress)
    _print_metrics(result.metrics)
    print(f"wrote {result.metrics_file}")
    return 0


def _with_masks(cfg) -> bool:
    from icdistill.data import resolve_with_masks
    from icdistill.detectors import family_facts

    return resolve_with_masks(cfg.data, family_facts(cfg.model.family).masks)


def _datasets(cfg, args: argparse.Namespace):
    from icdistill.data import build_datasets

    return build_datasets(cfg.data, with_masks=_with_masks(cfg), progress=not args.no_progress)


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats``: the class table of both splits, what the data report found, and the prior
    (written to ``--out``, default prior.json)."""
    from icdistill.data import compute_prior, data_report
    from icdistill.data.stats import class_table, format_class_table, format_data_report

    cfg = _load(args)
    train_set, test_set = _datasets(cfg, args)
    print(format_class_table(class_table(train_set, test_set), len(train_set), len(test_set)))
    print(format_data_report(data_report(train_set, test_set)))
    prior = compute_prior(train_set)
    out = Path(args.out) if args.out else Path("prior.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    prior.save(out)
    print(f"prior of {prior.num_images} training images (box sizes relative to the image):")
    for i, name in enumerate(prior.names):
        print(
            f"  {name:>16}: {prior.freq[i]:.3f} per image, w {prior.w_mean[i]:.3f}±{prior.w_std[i]:.3f}, "
            f"h {prior.h_mean[i]:.3f}±{prior.h_std[i]:.3f}"
        )
    print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``export``: :func:`icdistill.export.export` (the detector file, or ONNX + its sidecar)."""
    from icdistill.export import export

    for path in export(args.checkpoint, args.out, args.fmt, score_thresh=args.score_thresh,
                       allow_unsafe_pickle=args.allow_unsafe_pickle):
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from icdistill.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, progress=not args.no_progress)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from icdistill.reporting import write_run_report

    print(f"wrote {write_run_report(args.run_dir)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from icdistill.reporting import write_compare

    page, table = write_compare(args.run_dirs, args.out, baseline=args.baseline, teacher=args.teacher)
    print(table, end="")
    print(f"wrote {page}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return cmd_demo(args)
        if args.command in ("train", "distill"):
            return cmd_train(args, distill=args.command == "distill")
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "stats":
            return cmd_stats(args)
        if args.command in ("report", "compare"):
            return cmd_report(args) if args.command == "report" else cmd_compare(args)
        return cmd_export(args)
    except ICDistillError as exc:
        print(f"icdistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("icdistill: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
