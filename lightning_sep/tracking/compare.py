"""``make compare``: the platform's MLflow runs side by side, as a text table, a CSV and a bar chart.

:func:`compare` reads an experiment (default ``lightning-sep``) with MLflow's search API
(``MlflowClient.search_runs``): its training runs (tag ``lightning_sep.stage`` = ``fit``), newest first,
optionally only some families (``--model``, tag ``model.family``) and data (``--data``), then the reference
runs (``mixture``, ``oracle_*``: stage ``reference``) that have test scores on the same data.  Finished runs
only, unless ``--all``.  One row per run:

* ``run`` (the run id's first 8 characters), ``run name``, ``status`` (``RUNNING (process gone)`` for a run
  whose training was SIGKILLed on this machine), ``model``, ``data`` (tag
  ``data.dataset``), ``targets``;
* the key params: the ``model.init_args.*`` params whose values differ between the listed training runs
  (``front_end``, ``targets`` and long list/dict values left out), and always ``lr``; ``--params`` names them;
* ``epochs`` trained, ``val SDR`` -- the best epoch's ``val/sdr`` (``checkpoint.best_score`` when the
  checkpoint monitor is ``val/sdr``, else the maximum of the ``val/sdr`` history) -- and ``val SDR mixture``,
  the mixture baseline (``val/sdr_mixture``) at that epoch;
* ``test <target> <SDR|SIR|SAR>``: what ``make eval`` logged (``test/<target>/<metric>``: museval SiSEC
  medians on MUSDB18, BSS Eval v3 means on TIMIT); blank where a run has none.

The table is printed (dB, two decimals) and written atomically to ``<out>/compare.csv`` (with the full run
ids) and ``<out>/compare.png`` (a grouped bar chart of the validation and test SDRs per run); ``<out>`` is
``mlruns/compare`` beside the local store by default.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.bsseval import MUSDB_TARGETS
from lightning_sep.paths import default_tracking_uri
from lightning_sep.registry import available, config_path
from lightning_sep.tracking.mlflow import redact, results_dir, run_status
from lightning_sep.tracking.runs import EXPERIMENT, client
from lightning_sep.utils.atomic import atomic_write_bytes, atomic_write_text

#: the test metrics shown per target
TEST_METRICS = ("SDR", "SIR", "SAR")
#: targets in this order (MUSDB18's, then TIMIT's sources and their mean); any other follows alphabetically
TARGET_ORDER = (*MUSDB_TARGETS, "male", "female", "all")
#: model arguments that are never key params (linked from the data: the same for every run on it)
SKIPPED_PARAMS = ("front_end", "targets")
#: a param value longer than this (a list of layer sizes, a dict) is a blob, not a key param
MAX_PARAM_CHARS = 24
#: the param always shown when the runs have it
ALWAYS = "model.init_args.lr"


@dataclass
class CompareSettings:
    """Everything ``lightning-sep compare`` takes (``make compare`` variables in brackets)."""

    model: Optional[list[str]] = None  # MODEL: only runs of these families (training or reference)
    data: Optional[str] = None  # DATA: a conf/data name (musdb, timit, ...) or a data.dataset tag (musdb18hq, ...)
    experiment: str = EXPERIMENT
    include_all: bool = False  # also FAILED, KILLED and RUNNING runs
    references: bool = True  # add the reference runs with test scores on the same data
    params: Optional[list[str]] = None  # the key params to show, instead of those that differ (and lr)
    prefix: str = "test"  # the test metrics' prefix: test, test_wiener1, test_it1000, ...
    limit: int = 25  # at most this many training runs, the newest (0 = every one)
    out: Optional[str] = None  # folder of compare.csv and compare.png (default: mlruns/compare)


@dataclass
class CompareResult:
    table: pd.DataFrame  # one row per run, the columns of compare.csv
    text: str  # the printed table
    csv: Path
    png: Path
    hidden: int = 0  # training runs left out by ``limit``


# -- reading runs ----------------------------------------------------------------------------------------------------
def _stage(run: Any) -> str:
    return run.data.tags.get("lightning_sep.stage", "fit")


def _family(run: Any) -> str:
    return run.data.tags.get("model.family", "")


def _dataset(run: Any) -> str:
    return run.data.tags.get("data.dataset", "")


def _search(c: Any, experiment_id: str, filter_string: str = "") -> list[Any]:
    """Every active run of the experiment that ``filter_string`` selects, newest first (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = c.search_runs([experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"],
                             max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def logged_test_scores(run: Any, prefix: str = "test") -> dict[tuple[str, str], float]:
    """``{(target, metric): value}`` of the run's ``<prefix>/<target>/<SDR|SIR|SAR>`` metrics."""
    out = {}
    for key, value in run.data.metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == prefix and parts[2] in TEST_METRICS:
            out[(parts[1], parts[2])] = float(value)
    return out


def _target_key(target: str) -> tuple[int, str]:
    return (TARGET_ORDER.index(target) if target in TARGET_ORDER else len(TARGET_ORDER), target)


def validation_sdr(c: Any, run: Any) -> tuple[float, float]:
    """``(best validation SDR, the mixture's SDR at that epoch)``, NaN when the run has no ``val/sdr``.

    The best epoch's ``val/sdr`` is ``checkpoint.best_score`` when the checkpoint monitored ``val/sdr``
    (set when training ends), else the maximum of the ``val/sdr`` history (a run killed early, another
    monitor)."""
    history = [m for m in c.get_metric_history(run.info.run_id, "val/sdr") if math.isfinite(m.value)]
    if not history:
        return math.nan, math.nan
    best = max(history, key=lambda m: m.value)
    value = best.value
    tags = run.data.tags
    if tags.get("checkpoint.monitor") == "val/sdr":
        try:
            value = float(tags["checkpoint.best_score"])
        except (KeyError, ValueError):
            pass
    mixture = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "val/sdr_mixture")}
    baseline = mixture.get(best.step, run.data.metrics.get("val/sdr_mixture", math.nan))
    return float(value), float(baseline)


def _data_selection(data: str, runs: Sequence[Any]) -> set[str]:
    """The ``data.dataset`` tags that ``--data data`` selects: the tag itself, and for a ``conf/data`` name the
    datasets of the training runs made with that config's DataModule class (and ``protocol``, when it sets one)."""
    selected = {data}
    if data in available("data"):
        import yaml

        config = (yaml.safe_load(config_path("data", data).read_text()) or {}).get("data") or {}
        cls = str(config.get("class_path", "")).rsplit(".", 1)[-1]
        protocol = (config.get("init_args") or {}).get("protocol")
        for run in runs:
            params = run.data.params
            if _stage(run) != "fit" or params.get("data.class_path", "").rsplit(".", 1)[-1] != cls:
                continue
            if protocol is None or params.get("data.init_args.protocol") == str(protocol):
                selected.add(_dataset(run))
    return selected


# -- key params ------------------------------------------------------------------------------------------------------
def _column_name(key: str) -> str:
    """``model.init_args.lr`` -> ``lr``; ``data.init_args.batch_size`` -> ``data.batch_size``."""
    return key[len("model.init_args."):] if key.startswith("model.init_args.") else key.replace(".init_args.", ".")


def key_params(runs: Sequence[Any], wanted: Optional[Sequence[str]] = None) -> list[str]:
    """The params shown for training runs: ``wanted`` (short names are looked up as ``model.init_args.<name>``,
    ``data.init_args.<name>``, ``trainer.<name>``), else ``lr`` and every other ``model.init_args.*`` param
    that two of the runs hold with different values (no ``front_end``/``targets``, no long list or dict)."""
    params = [run.data.params for run in runs]
    present = set().union(*params) if params else set()
    if wanted:
        keys = []
        for name in wanted:
            candidates = [name] if "." in name else [f"model.init_args.{name}", f"data.init_args.{name}", f"trainer.{name}"]
            key = next((k for k in candidates if k in present), None)
            if key is None:
                model_args = sorted(_column_name(k) for k in present if k.startswith("model.init_args."))
                raise LightningSepError(
                    f"--params {name}: none of the listed training runs has it (looked for {', '.join(candidates)}). "
                    f"Their model arguments: {', '.join(model_args) or '(none)'}; other params by full name, "
                    "e.g. data.init_args.batch_size or trainer.max_epochs."
                )
            if key not in keys:
                keys.append(key)
        return keys
    keys = []
    for key in sorted(k for k in present if k.startswith("model.init_args.")):
        if _column_name(key).split(".")[0] in SKIPPED_PARAMS:
            continue
        values = [p[key] for p in params if key in p]
        if any(len(v) > MAX_PARAM_CHARS or v.startswith("{") for v in values):
            continue
        if key == ALWAYS or len(set(values)) > 1:
            keys.append(key)
    return sorted(keys, key=lambda k: (k != ALWAYS, k))


# -- the table -------------------------------------------------------------------------------------------------------
def build_table(c: Any, fit_runs: Sequence[Any], reference_runs: Sequence[Any], params: Sequence[str],
                prefix: str = "test") -> pd.DataFrame:
    """One row per run (training runs, then references), the columns of ``compare.csv``."""
    scores = {run.info.run_id: logged_test_scores(run, prefix) for run in [*fit_runs, *reference_runs]}
    targets = sorted({t for s in scores.values() for t, _ in s}, key=_target_key)
    test_columns = [(t, m, f"{prefix} {t} {m}") for t in targets for m in TEST_METRICS]
    rows = []
    for run in [*fit_runs, *reference_runs]:
        tags, run_scores = run.data.tags, scores[run.info.run_id]
        fit = _stage(run) == "fit"
        val, mixture = validation_sdr(c, run) if fit else (math.nan, math.nan)
        epoch = run.data.metrics.get("epoch")
        row: dict[str, Any] = {
            "run": run.info.run_id[:8],
            "run name": run.info.run_name or "",
            "status": run_status(run),
            "model": _family(run),
            "data": _dataset(run),
            "targets": tags.get("model.targets") or ",".join(sorted({t for t, _ in run_scores}, key=_target_key)),
        }
        row.update({_column_name(k): run.data.params.get(k) if fit else None for k in params})
        row["epochs"] = int(epoch) + 1 if fit and epoch is not None and math.isfinite(epoch) else None
        row["val SDR"], row["val SDR mixture"] = val, mixture
        row.update({column: run_scores.get((t, m), math.nan) for t, m, column in test_columns})
        row["run_id"] = run.info.run_id
        rows.append(row)
    table = pd.DataFrame(rows)
    table["epochs"] = table["epochs"].astype("Int64")
    return table


def format_table(table: pd.DataFrame, references_from: Optional[int] = None) -> str:
    """The table as aligned text (numbers right-aligned to two decimals, blank where missing; no full run id);
    an empty line before row ``references_from`` (the first reference run)."""
    columns = [c for c in table.columns if c != "run_id"]
    cells: dict[str, list[str]] = {}
    numeric = {}
    for col in columns:
        series = table[col]
        numeric[col] = pd.api.types.is_numeric_dtype(series)
        if pd.api.types.is_float_dtype(series):
            cells[col] = ["" if pd.isna(v) else f"{v:.2f}" for v in series]
        else:
            cells[col] = ["" if v is None or pd.isna(v) else str(v) for v in series]
    widths = {col: max([len(col), *map(len, cells[col])]) for col in columns}

    def line(values: dict[str, str]) -> str:
        return "  ".join(values[c].rjust(widths[c]) if numeric[c] else values[c].ljust(widths[c]) for c in columns).rstrip()

    head = line({c: c for c in columns})
    lines = [head, "-" * len(head)]
    for i in range(len(table)):
        if references_from is not None and i == references_from and i > 0:
            lines.append("")
        lines.append(line({c: cells[c][i] for c in columns}))
    return "\n".join(lines)


def plot_png(table: pd.DataFrame, title: str, prefix: str = "test") -> bytes:
    """A horizontal grouped bar chart as PNG bytes: one group per run (``<family> <run id[:8]>``, in the table's
    order from the top) with a bar for each SDR it has -- the validation SDR (a tick at its mixture baseline)
    and the test SDR of every target -- each labelled with its value (matplotlib's Agg canvas: no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [("val SDR", "validation SDR (best epoch)")]
    for col in table.columns:
        parts = col.split(" ")
        if len(parts) == 3 and parts[0] == prefix and parts[2] == "SDR" and table[col].notna().any():
            series.append((col, f"{prefix} SDR: {parts[1]}"))
    values = {col: pd.to_numeric(table[col], errors="coerce").to_numpy(float) for col, _ in series}
    baseline = pd.to_numeric(table["val SDR mixture"], errors="coerce").to_numpy(float)
    # runs top to bottom, each as tall as its bars (at least one slot), with half a slot between runs
    bars: dict[str, list[tuple[float, float]]] = {col: [] for col, _ in series}
    ticks, ticks_at, bounds, ticks_baseline, y = [], [], [], [], 0.0
    for i, (model, run) in enumerate(zip(table["model"], table["run"])):
        present = [col for col, _ in series if math.isfinite(values[col][i])]
        top = y
        for col in present:
            bars[col].append((y + 0.5, values[col][i]))
            if col == "val SDR" and math.isfinite(baseline[i]):
                ticks_baseline.append((y + 0.5, baseline[i]))
            y += 1.0
        y = max(y, top + 1.0)
        ticks.append(f"{model} {run}")
        ticks_at.append((top + y) / 2)
        bounds.append(y + 0.25)
        y += 0.5
    fig = Figure(figsize=(11.0, max(3.0, 1.2 + 0.2 * y)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for j, (col, label) in enumerate(series):
        if not bars[col]:
            continue
        ys, vs = zip(*bars[col])
        ax.barh(ys, vs, height=0.85, label=label, color=f"C{j}")
        for yy, v in bars[col]:
            ax.annotate(f"{v:.1f}", (v, yy), xytext=(2 if v >= 0 else -2, 0), textcoords="offset points",
                        ha="left" if v >= 0 else "right", va="center", fontsize=7)
    if ticks_baseline:
        ys, vs = zip(*ticks_baseline)
        ax.plot(vs, ys, linestyle="none", marker="|", markersize=10, markeredgewidth=2, color="black",
                label="validation mixture baseline")
    if not any(bars.values()):
        ax.text(0.5, 0.5, "no validation or test SDR in these runs", transform=ax.transAxes, ha="center", va="center")
    for b in bounds[:-1]:
        ax.axhline(b, color="gray", linewidth=0.5, alpha=0.3)
    ax.set_yticks(ticks_at)
    ax.set_yticklabels(ticks, fontsize=8)
    ax.set_ylim(max(y - 0.5, 1.0), 0.0)  # the first (newest) run on top
    ax.axvline(0.0, color="gray", linewidth=0.8)
    ax.set_xlabel("SDR (dB)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- the job ---------------------------------------------------------------------------------------------------------
def default_out() -> Path:
    """``mlruns/compare`` beside the local MLflow store (``<repo>/mlruns/compare`` for a tracking server)."""
    return results_dir("compare")


def _check_settings(s: CompareSettings) -> None:
    if s.limit < 0:
        raise LightningSepError(f"--limit {s.limit}: must be >= 0 (the newest N training runs; 0 = every one).")
    if not s.prefix or "/" in s.prefix:
        raise LightningSepError(f"--prefix {s.prefix!r}: the first part of the test metrics' names, e.g. test or "
                                "test_wiener1 (for test/<target>/SDR, test_wiener1/<target>/SDR).")


def _no_runs(s: CompareSettings, store: str, everything: Sequence[Any], matches: Callable[[Any], bool]) -> LightningSepError:
    """The error for a selection without runs: which filters, what the store holds, how to get runs."""
    what = [f"MODEL={' '.join(s.model)}"] if s.model else []
    what += [f"DATA={s.data}"] if s.data else []
    finished = "" if s.include_all else "finished "
    msg = f"No {finished}runs{' of ' + ' '.join(what) if what else ''} in MLflow experiment {s.experiment!r} ({store})."
    families = sorted({_family(r) for r in everything if _family(r)})
    datasets = sorted({_dataset(r) for r in everything if _dataset(r)})
    if families:
        msg += f" Families with runs there: {', '.join(families)}; data: {', '.join(datasets) or '(none)'}"
        msg += f" (DATA also takes a conf/data name: {', '.join(available('data'))})." if s.data else "."
    unfinished = [r for r in everything if r.info.status != "FINISHED" and matches(r)]
    if not s.include_all and unfinished:
        msg += f" {len(unfinished)} matching run(s) did not finish (failed, killed or running): ARGS=--all lists them."
    model = s.model[0] if s.model else "skipfilter"
    data = f" DATA={s.data}" if s.data in available("data") else ""
    msg += f" Get runs with `make train MODEL={model}{data}` (then `make eval MODEL={model}{data}` for test scores)."
    return LightningSepError(msg)


def compare(settings: CompareSettings) -> CompareResult:
    """Print the table of the runs ``settings`` selects; write ``compare.csv`` and ``compare.png``."""
    from mlflow.exceptions import MlflowException

    s = settings
    _check_settings(s)
    store = redact(default_tracking_uri())
    c = client()
    try:
        exp = c.get_experiment_by_name(s.experiment)
        if exp is None:
            names = sorted(e.name for e in c.search_experiments())
            raise LightningSepError(
                f"--experiment {s.experiment}: no such MLflow experiment in {store} (experiments there: "
                f"{', '.join(names) or '(none)'}). Training runs go to 'lightning-sep': `make train MODEL=skipfilter` "
                "creates it; or point MLFLOW_TRACKING_URI at the store that holds your runs."
            )
        everything = _search(c, exp.experiment_id)
    except MlflowException as err:
        raise LightningSepError(f"The MLflow store {store} cannot be read: {str(err).splitlines()[0][:300]}") from None
    runs = everything if s.include_all else [r for r in everything if r.info.status == "FINISHED"]

    datasets = _data_selection(s.data, everything) if s.data else None
    models = set(s.model or ())

    def matches(run: Any) -> bool:
        return (not models or _family(run) in models) and (datasets is None or _dataset(run) in datasets)

    fit = [r for r in runs if _stage(r) == "fit" and matches(r)]
    hidden = max(0, len(fit) - s.limit) if s.limit else 0
    fit = fit[: s.limit] if s.limit else fit
    scored = [r for r in runs if _stage(r) == "reference" and logged_test_scores(r, s.prefix)
              and (datasets is None or _dataset(r) in datasets)]
    named = [r for r in scored if _family(r) in models]
    if named:  # --model names reference methods: those, and no others
        references = named
    elif s.references and (fit or not models):  # those on the data asked for, else on the listed runs' data
        on = datasets if datasets is not None else {_dataset(r) for r in fit}
        references = [r for r in scored if _dataset(r) in on]
    else:
        references = []
    if (models and not fit and not named) or not (fit or references):
        raise _no_runs(s, store, everything, lambda r: _stage(r) in ("fit", "reference") and matches(r))

    try:
        table = build_table(c, fit, references, key_params(fit, s.params), s.prefix)
    except MlflowException as err:
        raise LightningSepError(f"The MLflow store {store} cannot be read: {str(err).splitlines()[0][:300]}") from None
    text = format_table(table, references_from=len(fit) if references else None)

    shown = ", ".join(sorted({_dataset(r) for r in [*fit, *references]}))
    title = f"MLflow experiment {s.experiment!r}, data: " + (f"{s.data} ({shown})" if s.data and s.data != shown else shown)
    title += f"; MODEL={' '.join(s.model)}" if s.model else ""
    out = Path(s.out).expanduser() if s.out else default_out()
    csv, png = out / "compare.csv", out / "compare.png"
    try:
        atomic_write_text(csv, table.to_csv(index=False, float_format="%.4f"))
        atomic_write_bytes(png, plot_png(table, title, s.prefix))
    except OSError as err:
        raise LightningSepError(
            f"--out {out}: cannot write compare.csv / compare.png there ({err.strerror or err}). Pass a writable "
            "folder: ARGS=\"--out DIR\"."
        ) from None

    print(f"{title} ({store}): {len(fit)} {'' if s.include_all else 'finished '}training run(s), newest first, "
          f"and {len(references)} reference run(s). val SDR: the best epoch's val/sdr; test: "
          f"{s.prefix}/<target>/<metric>; dB.", flush=True)
    print(text, flush=True)
    if hidden:
        print(f"({hidden} older training run(s) not shown: --limit 0 lists every one, ARGS=\"--limit 0\".)")
    print(f"Wrote {csv}\n      {png}", flush=True)
    return CompareResult(table=table, text=text, csv=csv, png=png, hidden=hidden)
