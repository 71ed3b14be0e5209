"""`radcap train`: train a report decoder on a data directory's features, log to MLflow, register it."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow
from prefect.utilities.annotations import quote

from radcap.catalog import DataCatalog
from radcap.settings import CaptionerSettings, get_settings
from tasks.train import (
    build_vocabulary,
    caption_sets,
    encoder_spec,
    find_trained,
    fit_captioner,
    log_and_register,
    stored_encoder_version,
    training_key,
    tune_decoding,
)


@flow(name="train-captioner")
def train_flow(data_dir: Path, out: Path, settings: CaptionerSettings | None = None,
               encoder_version: str | None = None, reuse: bool = False) -> dict:
    """With `reuse`, a registered version trained on the same data version, encoder and settings is
    returned instead of training again (the nightly run's cache)."""
    cfg = settings or get_settings().captioner
    version = stored_encoder_version(data_dir, encoder_version)
    key = training_key(data_dir, version, cfg)
    if reuse and (found := find_trained(cfg.registered_name, key)):
        return found
    sets = caption_sets(data_dir, version, cfg, ("train", "val"))
    vocab = build_vocabulary(quote(sets["train"]), cfg)
    data_version = json.loads(DataCatalog(data_dir).ingest_summary.read_text())["data_version"]
    extra = {"encoder_version": version, "encoder_spec": encoder_spec(data_dir, version), "data_version": data_version,
             "decoding": {"beam_width": cfg.beam_width, "length_penalty": cfg.length_penalty,
                          "no_repeat_ngram": cfg.no_repeat_ngram}}
    mlflow.set_experiment("radcap-captioner")
    with mlflow.start_run(run_name=f"train-{cfg.architecture}"):
        mlflow.log_params({**cfg.model_dump(), "data_dir": str(data_dir), "encoder_version": version,
                           "data_version": data_version, "vocabulary": len(vocab)})
        result = fit_captioner(quote(sets["train"]), quote(sets["val"]), quote(vocab), cfg, extra)
        tune_decoding(quote(result), quote(sets["val"]), cfg)
        tags = {"data_version": data_version, "encoder_version": version, "training_key": key}
        return log_and_register(quote(result), quote(sets), data_dir, out, cfg, tags)
