"""Run records: what a finished benchmark run leaves in the repository, so that a fresh checkout
(a later session, another machine) reuses the run instead of training it again.

A suite such as ``accuracy.py --suite bccd`` with every method, three seeds and the loss-weight
sweep is several CPU-hours: more than one sitting. Its run folders (``benchmark_out/``) are build
outputs, not kept in git, so without records every sitting would start from nothing. A record is
the small files of one finished run — ``config.yaml``, ``benchmark_stamp.json``, ``metrics.json``,
``metrics.jsonl``, ``command.txt`` — and, for a teacher, its ``detector.pt`` (the students'
``benchmark_stamp.json`` holds that file's SHA-256, so a student record is reused only with the
very teacher it was distilled from). Paths inside the files are stored relative to the checkout
(``${ROOT}``), the suite's out folder (``${OUT}``) and the data root (``${DATA}``), so a record made in ``/work/main`` is found in
any clone.

Layout: ``benchmarks/records/<suite folder>/<run folder relative to the suite's out>/``, e.g.
``benchmarks/records/bccd-validation/sweep/fitnet/w0.5/seed0/``; each record also holds
``record.json`` (when and on what machine the run was trained).

A record is restored into an empty run folder before the benchmark decides whether a run is
cached (a local folder made with another config is cleared first, so it cannot hide a record
that matches); if its config is not what would run now (an option added since, left at its default,
is no change: ``accuracy.same_config``), the benchmark deletes it and trains afresh, as
for any stale run folder, and the new run's record replaces the old one.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

RUN_FILES = ("config.yaml", "benchmark_stamp.json", "metrics.json", "metrics.jsonl", "command.txt")
TEACHER_WEIGHTS = "detector.pt"  # accuracy.Plan.teacher_pt's file name
TEXT_SUFFIXES = (".yaml", ".json", ".jsonl", ".txt")


class Records:
    """The records of one suite folder: ``root`` in the repository mirrors the runs under ``out``.

    ``subs`` maps each local path prefix to its portable token, longest first (``{"/work/main":
    "${ROOT}", "/work/shared/data/bccd": "${DATA}"}``)."""

    def __init__(self, root: Path, out: Path, subs: dict[str, str]):
        self.root, self.out = root, out
        self.subs = dict(sorted(subs.items(), key=lambda kv: -len(kv[0])))

    def record_dir(self, run_dir: Path) -> Path:
        return self.root / run_dir.relative_to(self.out)

    def restore(self, run_dir: Path) -> bool:
        """Copy a finished run's record into ``run_dir`` when that folder holds no run yet.
        Returns whether it did."""
        src = self.record_dir(run_dir)
        if (run_dir / "config.yaml").exists() or not (src / "metrics.json").is_file():
            return False
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in (*RUN_FILES, TEACHER_WEIGHTS):
            if (src / name).is_file():
                self._copy(src / name, run_dir / name, to_local=True)
        return True

    def save(self, run_dir: Path, hardware: dict[str, Any], teacher: bool = False) -> Path:
        """Write (or replace) the record of the finished run in ``run_dir``; ``teacher`` adds its
        weights. Returns the record's folder."""
        dst = self.record_dir(run_dir)
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        names = (*RUN_FILES, TEACHER_WEIGHTS) if teacher else RUN_FILES
        for name in names:
            if (run_dir / name).is_file():
                self._copy(run_dir / name, dst / name, to_local=False)
        (dst / "record.json").write_text(json.dumps({"recorded": date.today().isoformat(), "hardware": hardware},
                                                    indent=2) + "\n")
        return dst

    def provenance(self, run_dir: Path) -> dict[str, Any] | None:
        """``record.json`` of the run's record (date and machine it was trained on), if any."""
        path = self.record_dir(run_dir) / "record.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _copy(self, src: Path, dst: Path, to_local: bool) -> None:
        if src.suffix not in TEXT_SUFFIXES:
            shutil.copyfile(src, dst)
            return
        text = src.read_text()
        for real, token in self.subs.items():
            text = text.replace(token, real) if to_local else text.replace(real, token)
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(dst)
