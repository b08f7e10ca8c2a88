"""Reporting: W&B sink (one run per job), multirun summary table and plots, Hydra callback.

Submodules are imported on demand (``from src.report.wandb_sink import WandbSink``) so that
``logger=none`` runs never pay for importing wandb.
"""
