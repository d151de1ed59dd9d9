"""``make reproduce``: the runs behind ``docs/reproduction.md``, trained, evaluated and tabulated.

    python -m lightning_sep.evaluation.reproduce [--groups families ten_speakers rank context] [--dry-run]

Every run is an ordinary ``lightning-sep fit`` (tracked in MLflow like ``make train``) followed by
``lightning-sep eval --run-id`` (BSS Eval v3 on the test mixtures, logged to the same run); the
reference rows (mixture, oracle masks) are evaluated once per dataset.  The tables are printed as
Markdown from the MLflow runs (``test/all/SDR`` ..., tags ``model.family`` and ``data.dataset``),
so what the report says is what MLflow holds.  ``TIMIT_ROOT`` selects real TIMIT; unset, the
embedded corpus.  Finished groups are not retrained: a run whose name (the ``reproduce.name`` tag)
already has test scores in the store is reused (``--retrain`` to force).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lightning_sep.paths import REPO_ROOT

METRICS = ("SDR", "SIR", "SAR", "SI-SDR")


@dataclass(frozen=True)
class Run:
    name: str
    model: str
    data: str
    args: tuple[str, ...] = field(default_factory=tuple)
    note: str = ""
    #: separation iterations at test time (None = the model's, 4000 for the autoencoders)
    iterations: Optional[int] = None

    @property
    def prefix(self) -> str:
        return "test" if self.iterations is None else f"test_it{self.iterations}"


#: iterations of the separation by optimisation in the shorter evaluations: 4000 (the paper) takes about a
#: minute per mixture for the CCAE on a 2-core CPU (two for the RCAE), so the RCAE and the rank sweep run
#: 1000, and the NAE and CCAE are scored at both
SHORT = 1000


def _rank(model: str, k: int) -> Run:
    return Run(f"{model}-K{k}", model, "timit", ("--model.init_args.rank", str(k)), f"K = {k}",
               SHORT if model != "nmf" else None)


def _context(model: str, c: int) -> Run:
    return Run(f"{model}-C{c}", model, "timit_ten_speakers",
               ("--model.init_args.segment_frames", str(c), "--data.init_args.segment_frames", str(max(c, 2))),
               f"C = {c} frames")


GROUPS: dict[str, list[Run]] = {
    # every family on the CAE paper's protocol (pairs, sqrt-Hann 1024/256)
    "families": [Run("nmf-pairs", "nmf", "timit"), Run("nae-pairs", "nae", "timit"),
                 Run("nae-pairs", "nae", "timit", note=f"{SHORT} iterations", iterations=SHORT),
                 Run("ccae-pairs", "ccae", "timit"),
                 Run("ccae-pairs", "ccae", "timit", note=f"{SHORT} iterations", iterations=SHORT),
                 Run("rcae-pairs", "rcae", "timit", note=f"{SHORT} iterations", iterations=SHORT)]
                + [Run(f"{m}-pairs", m, "timit") for m in ("vae", "deep_vae", "ae", "skipfilter")],
    # the VAE paper's protocol (ten speakers, 25 mixtures, Hann 1024/256, 17-frame segments)
    "ten_speakers": [Run(f"{m}-ten", m, "timit_ten_speakers") for m in ("vae", "deep_vae", "ae", "nmf")],
    # CAE paper: the trend over the rank K (80 is in "families"); the CCAE's sweep is left out for time
    "rank": [_rank("nmf", k) for k in (20, 40)] + [Run("nmf-pairs", "nmf", "timit", note="K = 80")]
    + [_rank("nae", k) for k in (20, 40)] + [Run("nae-pairs", "nae", "timit", note="K = 80", iterations=SHORT)],
    # VAE paper Table 1: the trend over the segment length C
    "context": [_context("vae", c) for c in (1, 5)] + [Run("vae-ten", "vae", "timit_ten_speakers", note="C = 17 frames")]
    + [_context("vae", 50)],
}
REFERENCES = ("mixture", "oracle_ibm", "oracle_irm1", "oracle_irm2")


def _cli(*args: str, log: Path) -> str:
    cmd = [str(Path(sys.executable).parent / "lightning-sep"), *args]
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as fh:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        fh.write(proc.stdout)
    if proc.returncode:
        print(proc.stdout[-3000:], file=sys.stderr)
        raise SystemExit(f"failed ({proc.returncode}): see {log}")
    return proc.stdout


def _client():
    from lightning_sep.tracking.runs import client

    return client()


def _runs(name: str, condition: str = "") -> list:
    """The runs tagged ``reproduce.name = name`` (and ``condition``), newest first."""
    c = _client()
    exp = c.get_experiment_by_name("lightning-sep")
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], f"tags.`reproduce.name` = '{name}'" + condition,
                         order_by=["attributes.start_time DESC"])


def _finished(name: str, prefix: str = "test") -> Optional[str]:
    """The newest run of ``name`` with test scores under ``prefix``."""
    return next((r.info.run_id for r in _runs(name) if f"{prefix}/all/SDR" in r.data.metrics), None)


def _trained(name: str) -> Optional[str]:
    """The newest finished training of ``name`` (scored or not)."""
    runs = _runs(name, " and attributes.status = 'FINISHED'")
    return runs[0].info.run_id if runs else None


def train_and_eval(run: Run, logs: Path, retrain: bool) -> str:
    if not retrain and (run_id := _finished(run.name, run.prefix)):
        print(f"{run.name}: reusing run {run_id}", flush=True)
        return run_id
    if not retrain and (run_id := _trained(run.name)):
        print(f"{run.name}: reusing the trained run {run_id}", flush=True)
        _evaluate(run, run_id, logs)
        return run_id
    out = _cli("fit", "--config", "conf/trainer/cpu.yaml", "--config", f"conf/data/{run.data}.yaml",
               "--config", f"conf/model/{run.model}.yaml", "--trainer.enable_progress_bar", "false", *run.args,
               log=logs / f"{run.name}.log")
    match = re.search(r"MLflow run:\s+([0-9a-f]{32})", out)
    if not match:
        raise SystemExit(f"{run.name}: no MLflow run id in the training output ({logs / run.name}.log)")
    run_id = match.group(1)
    _client().set_tag(run_id, "reproduce.name", run.name)
    _evaluate(run, run_id, logs)
    return run_id


def _evaluate(run: Run, run_id: str, logs: Path) -> None:
    extra = ("--iterations", str(run.iterations)) if run.iterations else ()
    _cli("eval", "--run-id", run_id, "--data", run.data, "--no-progress", *extra, log=logs / f"{run.name}.log")


def reference_rows(data: str, logs: Path) -> None:
    for method in REFERENCES:
        _cli("eval", "--model", method, "--data", data, "--no-progress", log=logs / f"references-{data}.log")


def table(rows: list[tuple[str, str, str, str]]) -> str:
    """Markdown: one row per (label, run id, note, metric prefix) with the test means and the validation SDR."""
    c = _client()
    lines = ["| method | note | SDR | SIR | SAR | SI-SDR | val SDR | training (min) | MLflow run |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for label, run_id, note, prefix in rows:
        run = c.get_run(run_id)
        m = run.data.metrics
        cells = [f"{m[f'{prefix}/all/{k}']:.2f}" if f"{prefix}/all/{k}" in m else "" for k in METRICS]
        val = f"{m['val/sdr']:.2f}" if "val/sdr" in m else ""
        minutes = (f"{(run.info.end_time - run.info.start_time) / 60000:.1f}"
                   if note != "reference" and run.info.end_time else "")
        lines.append(f"| {label} | {note} | {' | '.join(cells)} | {val} | {minutes} | `{run_id[:8]}` |")
    return "\n".join(lines)


def reference_table_rows(data_name: str) -> list[tuple[str, str, str]]:
    c = _client()
    exp = c.get_experiment_by_name("lightning-sep")
    rows = []
    for method in REFERENCES:
        runs = c.search_runs([exp.experiment_id], f"tags.`model.family` = '{method}' and tags.`data.dataset` = '{data_name}'",
                             order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            rows.append((method, runs[0].info.run_id, "reference", "test"))
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--logs", default=str(REPO_ROOT / "mlruns" / "reproduce-logs"))
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--tables-only", action="store_true", help="print the tables of the runs already in MLflow")
    args = parser.parse_args(argv)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], str] = {}
    datasets = sorted({r.data for g in args.groups for r in GROUPS[g]})
    if not args.tables_only:
        for data in datasets:
            reference_rows(data, logs)
    for group in args.groups:
        for run in GROUPS[group]:
            run_id = _finished(run.name, run.prefix) if args.tables_only else train_and_eval(run, logs, args.retrain)
            if run_id:
                done[(run.name, run.prefix)] = run_id
    from lightning_sep.evaluation.evaluate import load_datamodule

    print(f"\n<!-- generated by python -m lightning_sep.evaluation.reproduce; TIMIT_ROOT={os.environ.get('TIMIT_ROOT', '')} -->")
    for group in args.groups:
        data = GROUPS[group][0].data
        dm = load_datamodule(data)
        dm.test_mixtures()
        rows = [(r.model, done[(r.name, r.prefix)], r.note, r.prefix) for r in GROUPS[group] if (r.name, r.prefix) in done]
        print(f"\n### {group} (DATA={data}, {getattr(dm, 'eval_name', dm.dataset_name)})\n")
        print(table(reference_table_rows(getattr(dm, "eval_name", dm.dataset_name)) + rows))


if __name__ == "__main__":
    main()
