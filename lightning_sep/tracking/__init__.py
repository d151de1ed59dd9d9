"""Experiment tracking: MLflow runs (params, metrics, tags, config, checkpoint locations)."""

from lightning_sep.tracking.mlflow import MLflowLogger, MLflowSaveConfig, RunSummary, redact

__all__ = ["MLflowLogger", "MLflowSaveConfig", "RunSummary", "redact"]
