"""`radcap train`: train a report decoder on a data directory's features, log to MLflow, register it."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.settings import DecoderSettings, SplitRules, get_settings
from radcap.registry.tracking import tracked_run
from radcap.tasks.train import (
    build_vocabulary,
    caption_sets,
    find_trained,
    fit_captioner,
    fit_domain_guard,
    log_and_register,
    training_inputs,
    tune_decoding,
)


@flow(name="train-captioner")
def train_flow(
    data_dir: Path,
    out: Path,
    settings: DecoderSettings | None = None,
    encoder_version: str | None = None,
    reuse: bool = False,
    rules: SplitRules | None = None,
) -> dict:
    """With `reuse`, a registered version trained on the same data version, encoder and settings is
    returned instead of training again (the nightly run's cache)."""
    cfg, rules = settings or get_settings().captioner, rules or get_settings().split
    inputs = training_inputs(data_dir, encoder_version, cfg, rules)
    if reuse and (found := find_trained(cfg.registered_name, inputs["training_key"])):
        return found
    sets = caption_sets(data_dir, inputs["encoder_version"], cfg, rules)
    vocab = build_vocabulary(quote(sets["train"]), cfg)
    with tracked_run(
        get_settings().tracking.captioner,
        f"train-{cfg.architecture}",
        {**cfg.model_dump(), "data_dir": str(data_dir), **inputs, "vocabulary": len(vocab)},
    ):
        result = fit_captioner(quote(sets["train"]), quote(sets["val"]), quote(vocab), cfg, inputs)
        tune_decoding(quote(result), quote(sets["val"]), cfg)
        fit_domain_guard(quote(result), quote(sets), data_dir, get_settings().domain)
        return log_and_register(quote(result), quote(sets), data_dir, out, cfg, inputs)
