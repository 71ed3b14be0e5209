"""`radcap evaluate`: caption a split with a registered model and score it beside three baselines."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow
from prefect.utilities.annotations import quote

from tasks.evaluate import evaluation_sets, generate, load_captioner, score, write_report


@flow(name="evaluate-captioner")
def evaluate_flow(data_dir: Path, model: str, split: str, out: Path, meteor: bool = True) -> dict:
    bundle, name = load_captioner(model)
    evaluated, train = evaluation_sets(data_dir, quote(bundle), split)
    systems = generate(quote(bundle), quote(evaluated), quote(train))
    scores = score(quote(evaluated), quote(systems), meteor)
    mlflow.set_experiment("radcap-evaluation")
    with mlflow.start_run(run_name=f"evaluate-{split}"):
        mlflow.log_params({"model": name, "data_dir": str(data_dir), "split": split,
                           "encoder_version": bundle.config["encoder_version"]})
        meta = {"model": name, "data_dir": str(data_dir), "split": split, "architecture": bundle.config["architecture"]}
        return write_report(quote(scores), quote(evaluated), quote(systems), out, meta)
