"""``lightning-sep``: a LightningCLI over every separator family and DataModule.

``lightning-sep fit --config conf/trainer/cpu.yaml --config conf/data/musdb.yaml
--config conf/model/skipfilter.yaml`` is what ``make train`` runs.  Models and DataModules are
chosen by ``class_path`` (subclass mode), the front end and the targets are linked from the
DataModule into the model, every run is tracked in MLflow, and ``--print_config`` prints a config
that reproduces the run.

More subcommands are plain argparse programs: ``lightning-sep analyze`` (the neural couplings
analysis, :mod:`lightning_sep.analysis.nca`), ``lightning-sep tune`` (an Optuna study,
:mod:`lightning_sep.tuning.study`), ``lightning-sep eval`` (museval scores on the
MUSDB18 test set, :mod:`lightning_sep.evaluation.evaluate`), ``lightning-sep separate`` (wav
files per target, :mod:`lightning_sep.separation.separate`) and ``lightning-sep confidence`` (the
VAE's average posterior variance against the input SNR, :mod:`lightning_sep.evaluation.confidence`).
``lightning-sep compare`` tabulates the MLflow runs side by side (:mod:`lightning_sep.tracking.compare`),
``lightning-sep ui`` and ``lightning-sep server`` start the MLflow UI and a team tracking server
(:mod:`lightning_sep.tracking.server`).

:func:`main` turns SIGINT and SIGTERM into a clean stop (:func:`interruptible`): the MLflow run ends
KILLED, not RUNNING.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Iterator, Optional, Sequence

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_sep.errors import LightningSepError
from lightning_sep.evaluation.validation import BSSEvalValidation
from lightning_sep.models.base import SpectrogramSeparator
from lightning_sep.registry import check_config_args
from lightning_sep.tracking import MLflowLogger, MLflowSaveConfig, RunSummary
from lightning_sep.tracking.examples import ValidationExample
from lightning_sep.tracking.mlflow import Interrupted
from lightning_sep.trainer import RandomState, check_trainer_settings, compile_model


class SeparationCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.front_end", "model.init_args.front_end", apply_on="instantiate")
        parser.link_arguments("data.targets", "model.init_args.targets", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ValidationExample, "example")  # --example.seconds 0 turns it off
        # --bsseval.every_n_epochs N: BSS Eval v4 of the full validation tracks (val/bss/...); 0 (default) = off
        parser.add_lightning_class_args(BSSEvalValidation, "bsseval")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/sdr",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {"class_path": "lightning_sep.tracking.MLflowLogger"},
                # the resolved config is logged once, prefixed, by MLflowSaveConfig
                "trainer.enable_autolog_hparams": False,
            }
        )
        parser.add_argument(
            "--resume", type=Optional[str], default=None,
            help="fit: continue training (RESUME=): 'last' = the last checkpoint of the latest run of this model, "
            "continuing its MLflow run at the same global step; or the path of a checkpoint",
        )
        parser.add_argument("--compile", type=bool, default=False,
                            help="fit: torch.compile the model (COMPILE=1)")

    def _section(self, config: Any) -> Any:
        return config[self.subcommand] if self.subcommand else config

    def instantiate_trainer(self, **kwargs):
        section = self._section(self.config_init)
        trainer_config = {**section.get("trainer", {}), **kwargs}
        check_trainer_settings(trainer_config)
        if section.get("resume"):
            self._resume(section, trainer_config.get("logger"))
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:  # Lightning's own check of a setting
            raise LightningSepError(f"Trainer settings (conf/trainer, DEVICES, PRECISION, ...): {err}") from None
        if not trainer.loggers:  # --trainer.logger=false: nothing to log learning rates to
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        for callback in trainer.callbacks:  # before any data is prepared: data without full tracks is refused now
            if isinstance(callback, BSSEvalValidation):
                callback.check_datamodule(getattr(self, "datamodule", None))
                callback.check_monitors(trainer, getattr(self, "model", None))
        return trainer

    def _resume(self, section: Any, logger: Any) -> None:
        """``--resume``: the checkpoint ``fit`` restores (weights-only unless ``--weights_only false``), and
        the MLflow run the logger continues."""
        from lightning_sep.tracking.runs import resolve_resume

        if self.subcommand != "fit":
            raise LightningSepError(f"RESUME= (--resume) continues training: use it with fit, not {self.subcommand}.")
        if section.get("ckpt_path"):
            raise LightningSepError("Give RESUME= (--resume) or --ckpt_path, not both.")
        uri = logger._tracking_uri if isinstance(logger, MLflowLogger) else None
        experiment = logger._experiment_name if isinstance(logger, MLflowLogger) else "lightning-sep"
        where = resolve_resume(section["resume"], getattr(self.model, "family", type(self.model).__name__), uri, experiment)
        for config in (section, self._section(self.config)):  # what fit restores, and what the run records
            config["ckpt_path"] = str(where.ckpt)
            if config.get("weights_only") is None:
                config["weights_only"] = True
        if where.run_id and isinstance(logger, MLflowLogger):
            logger.resume(where.run_id)
        rank_zero_info(f"Resuming from {where.ckpt}" + (f" (MLflow run {where.run_id})" if where.run_id else ""))

    def before_fit(self) -> None:
        if self._section(self.config_init).get("compile"):
            self.model = compile_model(self.model)


def run(
    args: Optional[list[str]] = None, *, subcommand: bool = True, callbacks: Sequence[Callback] = (),
    exit_on_error: bool = True,
) -> SeparationCLI:
    """Parse ``args`` (``sys.argv[1:]`` when None), then run the subcommand; returns the CLI.

    ``subcommand=False`` parses a config without a subcommand and instantiates the model, data and
    Trainer without running anything (``make tune`` then calls ``cli.trainer.fit``); ``callbacks``
    are added to the Trainer's; ``exit_on_error=False`` raises a parse error instead of exiting.
    """
    check_config_args(sys.argv[1:] if args is None else args)
    if args is not None and list(args) == sys.argv[1:]:
        args = None  # the console script: LightningCLI reads sys.argv itself (and warns when given both)
    return SeparationCLI(
        model_class=SpectrogramSeparator,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=MLflowSaveConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [RunSummary(), LearningRateMonitor(logging_interval="epoch"), RandomState(),
                                        *callbacks]},
        seed_everything_default=42,
        parser_kwargs={"exit_on_error": exit_on_error},
        run=subcommand,
        args=args,
    )


def user_error(exc: Optional[BaseException]) -> Optional[LightningSepError]:
    """The :class:`LightningSepError` behind ``exc``, if any.

    jsonargparse re-raises errors from a class's ``__init__`` as a type-validation ``ValueError``;
    the user's error is in its ``__context__``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LightningSepError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _which_model_arguments(parser: argparse.ArgumentParser, model_help: str, nargs: Optional[str] = None) -> None:
    which = parser.add_argument_group("which model (default: the best checkpoint of the latest finished run of --model)")
    which.add_argument("--model", nargs=nargs, help=model_help)
    which.add_argument("--ckpt", help="a checkpoint file (.ckpt)")
    which.add_argument("--run-id", help="an MLflow run id: its best checkpoint")
    which.add_argument("--trust-checkpoint", action="store_true",
                       help="load the checkpoint with full unpickling (only for files you trust; default: weights only)")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    _which_model_arguments(parser, "a family (conf/model/<name>.yaml) or a reference method (eval only)")
    run = parser.add_argument_group("inference")
    run.add_argument("--wiener", type=int, default=0, metavar="ITERATIONS", dest="wiener_iterations",
                     help="multichannel Wiener post-filter with this many EM iterations (0 = off; 1 is usual)")
    run.add_argument("--iterations", type=int, default=None, dest="separation_iterations",
                     help="nmf, nae, ccae, rcae: iterations of the separation by optimisation (default: the model's, "
                     "4000 for the autoencoders, 500 for NMF)")
    run.add_argument("--chunk-seconds", type=float, default=20.0, help="chunk length of the overlap-add inference")
    run.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-fade between chunks")
    run.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, ...")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def eval_parser() -> argparse.ArgumentParser:
    from lightning_sep.separation import REFERENCE_METHODS

    parser = argparse.ArgumentParser(
        prog="lightning-sep eval",
        description="BSS Eval v4 scores (museval's, computed by lightning_sep.evaluation.bsseval_v4; --metrics museval "
        "for museval itself) on the MUSDB18 test set (MUSDB_ROOT, else the embedded corpus), SiSEC medians; with --data timit: BSS Eval v3 (bss_eval_sources) and SI-SDR on the TIMIT test mixtures "
        "(TIMIT_ROOT, else the embedded corpus). Logged to the model's MLflow run. Reference methods: "
        + ", ".join(REFERENCE_METHODS) + ".",
    )
    _model_arguments(parser)
    data = parser.add_argument_group("data and results")
    data.add_argument("--data", default="musdb", help="conf/data/<name>.yaml (default musdb; timit, timit_ten_speakers)")
    data.add_argument("--root", help="dataset folder (default: MUSDB_ROOT / TIMIT_ROOT, else the embedded corpus)")
    data.add_argument("--tracks", nargs="+", metavar="NAME", help="only these test tracks (TIMIT: test mixtures)")
    data.add_argument("--targets", nargs="+", metavar="TARGET",
                      help="reference methods only: which estimates (default: MUSDB vocals drums bass other "
                      "accompaniment; TIMIT male female)")
    data.add_argument("--out", help="results folder (default: mlruns/eval beside the MLflow store)")
    data.add_argument("--metrics", default="bsseval", choices=["bsseval", "museval"],
                      help="BSS Eval v4 implementation: bsseval (default: museval's numbers, seconds per track, GPU if "
                           "--device is one) or museval (the reference; minutes per track, results in <method>-museval)")
    data.add_argument("--workers", type=int,
                      help="scoring processes (default: 1 for bsseval; museval: from cores and free memory)")
    data.add_argument("--save-estimates", action="store_true", help="also write the estimates as wav files")
    data.add_argument("--overwrite", action="store_true", help="discard results of other settings in the results folder")
    data.add_argument("--no-mlflow", dest="log_mlflow", action="store_false", help="do not log to MLflow")
    data.add_argument("--experiment", default="lightning-sep", help="MLflow experiment of the training runs")
    return parser


def separate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-sep separate",
        description="Separate audio files with a trained model: one wav per target in OUT/<input name>/.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="wav, flac, ogg, mp3 (mp4/.stem.mp4 with ffmpeg)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--subtype", default="FLOAT", help="wav sample format: FLOAT (default), PCM_16, PCM_24")
    _model_arguments(parser)
    return parser


def confidence_parser() -> argparse.ArgumentParser:
    from lightning_sep.evaluation.confidence import DEFAULT_SNRS

    parser = argparse.ArgumentParser(
        prog="lightning-sep confidence",
        description="The VAE's confidence score against the input SNR (paper vae-separation-pandey Sec. 4.3, "
        "Fig. 5): the test mixtures of --data remixed at each SNR, separated by a vae or deep_vae model; the "
        "average posterior variance and the BSS Eval SDR per mixture and source (confidence.csv), their means "
        "per SNR (confidence_summary.csv) and the curve (confidence.png); logged to the model's MLflow run.",
    )
    _model_arguments(parser)
    data = parser.add_argument_group("data and results")
    data.add_argument("--data", default="timit_ten_speakers",
                      help="conf/data/<name>.yaml, speech mixtures with a settable SNR (default timit_ten_speakers; timit)")
    data.add_argument("--root", help="the TIMIT folder (default: TIMIT_ROOT, else the embedded corpus)")
    data.add_argument("--snrs", nargs="*", metavar="DB",
                      help="input SNRs (male-to-female power) in dB (default: "
                      + " ".join(f"{v:g}" for v in DEFAULT_SNRS) + ")")
    data.add_argument("--mixtures", nargs="+", metavar="NAME", help="only these test mixtures (default: every one)")
    data.add_argument("--out", help="results folder (default: mlruns/eval/<dataset>/<method>/confidence)")
    data.add_argument("--no-mlflow", dest="log_mlflow", action="store_false", help="do not log to MLflow")
    data.add_argument("--experiment", default="lightning-sep", help="MLflow experiment of the training runs")
    return parser


def tune_parser() -> argparse.ArgumentParser:
    from lightning_sep.tuning.study import EXPERIMENT

    parser = argparse.ArgumentParser(
        prog="lightning-sep tune",
        description="An Optuna study over a family's hyperparameters (conf/tune/<model>.yaml): seeded TPE, a pruner fed "
        "each validation's SDR, failed trials recorded; shared by every worker on the same --storage and --study "
        "(run again to resume). MLflow: one parent run per study, one child per trial; the best configuration as a "
        "config file for `make train`, and the history and importance plots.",
    )
    parser.add_argument("--model", required=True, help="a family with a search space (conf/tune/<model>.yaml)")
    parser.add_argument("--data", default="timit", help="conf/data/<name>.yaml (default timit)")
    parser.add_argument("--trainer", default="cpu", help="conf/trainer/<name>.yaml (default cpu)")
    parser.add_argument("--n-trials", type=int, default=20,
                        help="the study's total number of trials, across workers and resumptions (default 20)")
    parser.add_argument("--study", help="study name (default <model>-<data>); an existing one is resumed")
    parser.add_argument("--storage", help="SQLAlchemy URL (default: $OPTUNA_STORAGE, else sqlite:///<repo>/mlruns/optuna.db)")
    parser.add_argument("--space", help="a search-space file instead of conf/tune/<model>.yaml")
    parser.add_argument("--pruner", help="override the file's pruner: median, percentile, hyperband, successive_halving, none")
    parser.add_argument("--seed", type=int, default=42, help="the sampler's seed (default 42)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="do not start a new study with the default configuration")
    parser.add_argument("--metric",
                        help="the objective, a validation metric logged every epoch (default: the space file's metric, "
                        "val/sdr); val/bss/sdr or val/bss/<target>/<SDR|SIR|SAR|ISR> scores the full validation tracks "
                        "with BSS Eval v4 every epoch of every trial (--bsseval.every_n_epochs 1; MUSDB data)")
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"MLflow experiment (default {EXPERIMENT})")
    parser.add_argument("--out", help="results folder (default mlruns/tune/<study>)")
    return parser


def analyze_parser() -> argparse.ArgumentParser:
    from lightning_sep.analysis.nca import NCA_FAMILIES, AnalyzeSettings

    d = AnalyzeSettings()
    parser = argparse.ArgumentParser(
        prog="lightning-sep analyze",
        description="The neural couplings analysis (paper dae-skipfilter-nca-mimilakis Sec. 3-5) of trained "
        + ", ".join(NCA_FAMILIES) + " models on the MUSDB18 test tracks (MUSDB_ROOT, else the embedded corpus): "
        "student and compositional couplings matrices fitted on batches of adjacent frames where all stems are "
        "active (up to --max-segments per track), the linear-composition and identity baselines, TOD-R and SNRs "
        "(Tables 1-3 as CSV and Markdown), heatmaps of the couplings matrices; logged to each model's MLflow run under nca/.",
    )
    _which_model_arguments(parser, "one or more of " + ", ".join(NCA_FAMILIES) + " (MODEL=\"dae mss_dae skipfilter\")", "+")
    nca = parser.add_argument_group("the analysis")
    nca.add_argument("--segment-seconds", type=float, default=d.segment_seconds,
                     help=f"T adjacent frames per batch, in seconds (default {d.segment_seconds}, the paper's)")
    nca.add_argument("--max-segments", type=int, default=d.max_segments,
                     help=f"at most this many active batches per track, evenly spread (default {d.max_segments}; 0 = every one)")
    nca.add_argument("--threshold-db", type=float, default=d.threshold_db,
                     help=f"a stem is active in a frame within this many dB of its loudest frame (default {d.threshold_db:g})")
    nca.add_argument("--active-fraction", type=float, default=d.active_fraction,
                     help=f"keep a batch when every stem is active in this fraction of its frames (default {d.active_fraction:g})")
    nca.add_argument("--iterations", type=int, default=d.iterations,
                     help=f"Adam iterations per batch and strategy (default {d.iterations}, the authors' code)")
    nca.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g}, the paper's)")
    nca.add_argument("--zoom-bins", type=int, default=d.zoom_bins, help=f"bins in the zoomed heatmaps (default {d.zoom_bins})")
    nca.add_argument("--seed", type=int, default=d.seed, help=f"seed of the couplings' initialisation (default {d.seed})")
    nca.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, ...")
    nca.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    data = parser.add_argument_group("data and results")
    data.add_argument("--data", default="musdb", help="conf/data/<name>.yaml with MUSDB18-format tracks (default musdb)")
    data.add_argument("--root", help="dataset folder (default: MUSDB_ROOT, else the embedded corpus)")
    data.add_argument("--tracks", nargs="+", metavar="NAME", help="only these test tracks")
    data.add_argument("--out", help="results folder (default: mlruns/analysis beside the MLflow store)")
    data.add_argument("--overwrite", action="store_true", help="discard an analysis with other settings in the results folder")
    data.add_argument("--no-mlflow", dest="log_mlflow", action="store_false", help="do not log to MLflow")
    data.add_argument("--experiment", default="lightning-sep", help="MLflow experiment of the training runs")
    return parser


def _address_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="TCP port (default 5000)")


def ui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-sep ui",
        description="The MLflow UI on the project's store ($MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db), "
        "on 127.0.0.1 unless --host says otherwise. Other arguments go to `mlflow ui`.",
    )
    _address_arguments(parser)
    parser.add_argument("--store", help="a tracking URI instead of the project's store")
    return parser


def server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-sep server",
        description="A team MLflow tracking server: `mlflow server` with a database backend and an artifact proxy "
        "(default: mlruns/server/mlflow.db and mlruns/server/artifacts), on 127.0.0.1 unless --host says otherwise. "
        "Trainings log to it with MLFLOW_TRACKING_URI=http://127.0.0.1:<port>. Other arguments go to `mlflow server`.",
    )
    _address_arguments(parser)
    parser.add_argument("--backend-store-uri", help="SQLAlchemy URL of the database (default sqlite:///<repo>/mlruns/server/mlflow.db)")
    parser.add_argument("--artifacts-destination", help="where uploaded artifacts go (default <repo>/mlruns/server/artifacts)")
    parser.add_argument("--workers", type=int, help="server worker processes (default: MLflow's)")
    return parser


def run_ui(argv: list[str]):
    from lightning_sep.tracking.server import UISettings, ui

    args, extra = ui_parser().parse_known_args(argv)
    return ui(UISettings(**vars(args), extra=extra))


def run_server(argv: list[str]):
    from lightning_sep.tracking.server import ServerSettings, server

    args, extra = server_parser().parse_known_args(argv)
    return server(ServerSettings(**vars(args), extra=extra))


def compare_parser() -> argparse.ArgumentParser:
    from lightning_sep.tracking.compare import CompareSettings

    d = CompareSettings()
    parser = argparse.ArgumentParser(
        prog="lightning-sep compare",
        description="The MLflow runs side by side (MLflow's search API): model, data, the key params (the model "
        "arguments that differ between the runs, and lr), epochs, the best epoch's validation SDR and its mixture "
        "baseline, the test SDR/SIR/SAR per target that `make eval` logged. Training runs newest first, then the "
        "reference runs (mixture, oracle masks) scored on the same data. Printed, and saved as compare.csv and a "
        "bar chart compare.png.",
    )
    which = parser.add_argument_group("which runs (default: every finished training run, the newest --limit)")
    which.add_argument("--model", nargs="+", metavar="FAMILY",
                       help="only these families (MODEL=\"dae skipfilter\"); reference methods too (mixture, oracle_ibm, ...)")
    which.add_argument("--data", help="only runs on this data: a conf/data name (musdb, timit, timit_ten_speakers) or a "
                       "data.dataset tag (embedded_musdb, musdb18hq, embedded_timit-pairs, ...)")
    which.add_argument("--all", dest="include_all", action="store_true",
                       help="also failed, killed and running runs (default: finished ones)")
    which.add_argument("--no-references", dest="references", action="store_false",
                       help="without the reference runs (mixture, oracle masks) on the same data")
    which.add_argument("--limit", type=int, default=d.limit,
                       help=f"at most this many training runs, the newest (default {d.limit}; 0 = every one)")
    which.add_argument("--experiment", default=d.experiment, help=f"MLflow experiment (default {d.experiment})")
    cols = parser.add_argument_group("columns and results")
    cols.add_argument("--params", nargs="+", metavar="NAME",
                      help="the params to show (lr, hidden_size, data.init_args.batch_size, trainer.max_epochs, ...) "
                      "instead of lr and the model arguments that differ between the runs")
    cols.add_argument("--prefix", default=d.prefix,
                      help="the test metrics shown: test (default), test_wiener1 (make eval WIENER=1), test_it1000, ...")
    cols.add_argument("--out", help="folder of compare.csv and compare.png (default: mlruns/compare beside the MLflow store)")
    return parser


def run_compare(argv: list[str]):
    from lightning_sep.tracking.compare import CompareSettings, compare

    return compare(CompareSettings(**vars(compare_parser().parse_args(argv))))


def run_analyze(argv: list[str]):
    from lightning_sep.analysis.nca import AnalyzeSettings, analyze

    return analyze(AnalyzeSettings(**vars(analyze_parser().parse_args(argv))))


def run_tune(argv: list[str]):
    from lightning_sep.tuning.study import TuneSettings, tune

    return tune(TuneSettings(**vars(tune_parser().parse_args(argv))))


def run_confidence(argv: list[str]):
    from lightning_sep.evaluation.confidence import ConfidenceSettings, confidence_curve

    args = confidence_parser().parse_args(argv)
    return confidence_curve(ConfidenceSettings(**vars(args)))


def run_eval(argv: list[str]):
    from lightning_sep.evaluation.evaluate import EvalSettings, evaluate

    args = eval_parser().parse_args(argv)
    return evaluate(EvalSettings(**vars(args)))


def run_separate(argv: list[str]):
    from lightning_sep.separation.separate import separate_files

    return separate_files(**vars(separate_parser().parse_args(argv)))


_COMMANDS = {"analyze": run_analyze, "compare": run_compare, "eval": run_eval, "separate": run_separate,
             "confidence": run_confidence, "tune": run_tune,
             "ui": run_ui, "server": run_server}


def _raise_interrupted(signum: int, frame: Any) -> None:
    import signal

    signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C or SIGTERM does not cut the shutdown short
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`~lightning_sep.tracking.mlflow.Interrupted` (a ``KeyboardInterrupt``)
    in the main thread, at any point: Lightning's Ctrl-C shutdown then ends the MLflow run ``KILLED`` (and
    writes nothing half-way), where SIGTERM's default would leave it ``RUNNING`` forever. The previous
    handlers come back afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, _raise_interrupted)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def main(argv: Optional[list[str]] = None) -> int:
    """The ``lightning-sep`` console script: user errors print one clear line and exit 2; SIGINT and
    SIGTERM stop it cleanly (exit 130 / 143), its MLflow run marked KILLED."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with interruptible():
            try:
                if argv and argv[0] in _COMMANDS:
                    _COMMANDS[argv[0]](argv[1:])
                else:
                    run(argv)
            except SystemExit as exc:  # Lightning exits 1 after its Ctrl-C shutdown: say which signal it was
                context = exc.__context__
                if isinstance(context, KeyboardInterrupt):
                    raise context from None
                raise
    except MisconfigurationException as exc:  # a Lightning setting that only fails when training starts
        print(f"lightning-sep: error: {str(exc).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        import signal

        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"lightning-sep: stopped by {signal.Signals(signum).name}; finished results and checkpoints are kept "
              "(training: the MLflow run is marked KILLED, continue it with RESUME=last; eval and analyze: "
              "rerun to finish the rest).", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        print(f"lightning-sep: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
