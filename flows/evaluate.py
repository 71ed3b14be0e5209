"""`radcap evaluate`: caption a split with a registered model and score it beside three baselines."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow
from prefect.utilities.annotations import quote

from tasks.evaluate import evaluation_sets, generate, load_captioner, retrieval_system, score, write_report


@flow(name="evaluate-captioner")
def evaluate_flow(data_dir: Path, model: str, split: str, out: Path, meteor: bool = True,
                  retriever: str | None = None) -> dict:
    bundle, name = load_captioner(model)
    evaluated, train = evaluation_sets(data_dir, quote(bundle), split)
    systems = generate(quote(bundle), quote(evaluated), quote(train))
    if retriever:  # the contrastive model's retrieved report, scored in the same table
        systems = {**systems, **retrieval_system(retriever, data_dir, quote(evaluated), split)}
    scores = score(quote(evaluated), quote(systems), meteor)
    mlflow.set_experiment("radcap-evaluation")
    with mlflow.start_run(run_name=f"evaluate-{split}"):
        mlflow.log_params({"model": name, "data_dir": str(data_dir), "split": split,
                           "encoder_version": bundle.config["encoder_version"]})
        meta = {"model": name, "data_dir": str(data_dir), "split": split, "architecture": bundle.config["architecture"]}
        return write_report(quote(scores), quote(evaluated), quote(systems), out, meta)
