"""Evaluation: metrics used during training (here) and full-track scoring."""
