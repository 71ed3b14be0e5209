"""`radcap pretrain-encoder`: train the CheXNet encoder on labelled images and register it in MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.settings import EncoderSettings, SplitRules, get_settings
from radcap.registry.tracking import tracked_run
from radcap.tasks.pretrain import (
    SELECTION,
    decode_split,
    fit_label_space,
    gather_labelled_images,
    mark_selection,
    register_encoder,
    train,
)


@flow(name="pretrain-encoder")
def pretrain_encoder_flow(
    data_dirs: list[Path], out: Path, settings: EncoderSettings | None = None, rules: SplitRules | None = None
) -> dict:
    cfg = settings or get_settings().encoder
    rules = rules or get_settings().split
    out.mkdir(parents=True, exist_ok=True)
    frame = mark_selection(quote(gather_labelled_images(data_dirs, out)), rules)
    train_px, train_rows, train_rejects = decode_split(quote(frame), "train", out, cfg.pretrain_size)
    val_px, val_rows, val_rejects = decode_split(quote(frame), SELECTION, out, cfg.pretrain_size)
    space = fit_label_space(quote(train_rows), cfg)
    with tracked_run(
        get_settings().tracking.encoder,
        "pretrain-encoder",
        {**cfg.model_dump(), "data_dirs": ",".join(map(str, data_dirs)), "select_on": rules.select_on},
    ):
        val_set = (val_px, val_rows) if len(val_rows) else None
        model, result = train(quote(space), quote((train_px, train_rows)), quote(val_set), cfg)
        counts = {"train_images": len(train_rows), "selection_images": len(val_rows), "select_on": rules.select_on}
        return register_encoder(
            quote(model), quote(space), quote(result), out, cfg, counts, quote(train_rejects + val_rejects)
        )
