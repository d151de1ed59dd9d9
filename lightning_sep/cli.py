"""``lightning-sep``: a LightningCLI over every separator family and DataModule.

``lightning-sep fit --config conf/trainer/cpu.yaml --config conf/data/musdb.yaml
--config conf/model/skipfilter.yaml`` is what ``make train`` runs.  Models and DataModules are
chosen by ``class_path`` (subclass mode), the front end and the targets are linked from the
DataModule into the model, every run is tracked in MLflow, and ``--print_config`` prints a config
that reproduces the run.
"""

from __future__ import annotations

import sys
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_sep.errors import LightningSepError
from lightning_sep.models.base import MixtureToTarget
from lightning_sep.registry import check_config_args
from lightning_sep.tracking import MLflowLogger, MLflowSaveConfig, RunSummary


class SeparationCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.front_end", "model.init_args.front_end", apply_on="instantiate")
        parser.link_arguments("data.targets", "model.init_args.targets", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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


def run(args: Optional[list[str]] = None) -> SeparationCLI:
    """Parse ``args`` (``sys.argv[1:]`` when None), then run the subcommand; returns the CLI."""
    check_config_args(sys.argv[1:] if args is None else args)
    return SeparationCLI(
        model_class=MixtureToTarget,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=MLflowSaveConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [RunSummary(), LearningRateMonitor(logging_interval="epoch")]},
        seed_everything_default=42,
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


def main(argv: Optional[list[str]] = None) -> int:
    """The ``lightning-sep`` console script: user errors print one clear line and exit 2."""
    try:
        run(argv)
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        print(f"lightning-sep: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
