"""`radcap evaluate`: caption a split with a registered model and score it beside the baselines."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.settings import get_settings
from radcap.registry.tracking import tracked_run
from radcap.tasks.evaluate import (
    caption_systems,
    check_guard,
    evaluation_sets,
    load_captioner,
    retrieval_captions,
    score,
    write_report,
)


@flow(name="evaluate-captioner")
def evaluate_flow(
    data_dir: Path,
    model: str,
    split: str,
    out: Path,
    meteor: bool = True,
    retriever: str | None = None,
    ood_data: list[Path] | None = None,
) -> dict:
    loaded = load_captioner(model)
    evaluated, train = evaluation_sets(data_dir, quote(loaded), split)
    systems = caption_systems(quote(loaded), quote(evaluated), quote(train))
    if retriever:  # the contrastive model's retrieved report, scored in the same table
        systems = [*systems, retrieval_captions(retriever, data_dir, quote(evaluated), split)]
    config = loaded.bundle.config
    meta = {
        "model": loaded.uri,
        "data_dir": str(data_dir),
        "split": split,
        "architecture": config.architecture,
        "encoder_version": config.encoder_version,
        "select_on": config.select_on,
    }
    guard = check_guard(quote(loaded), data_dir, quote(evaluated), ood_data or [])
    evaluation = score(quote(evaluated), quote(systems), meteor, meta, quote(guard))
    with tracked_run(get_settings().tracking.evaluation, f"evaluate-{split}", meta):
        return write_report(quote(evaluation), out)
