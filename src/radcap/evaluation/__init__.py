"""Evaluation of trained models: a captioner beside its baselines on a split, the guard's quality, the precision
fidelity checks."""
