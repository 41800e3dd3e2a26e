"""Sweeps on Ray Tune + Optuna + ASHA; the scripts in ``sweeps/`` are thin wrappers.

``spaces`` (knobs per method, from the registry), ``trial`` (what a trial runs: Ray Train with
reports forwarded to Tune), ``runner`` / ``tuner`` (options, the Tuner, resume), ``tracking`` /
``report`` (MLflow parent and child runs, tables and plots), ``crf`` (the CRF sweep),
``compare`` (``wsss compare``).
"""
