"""`radcap check-precision`: may this captioner (or retriever) read features of a lower-precision encoder build?
Its reports (or retrieved reports) on held-out studies from both precisions are compared; a pass is recorded on
its registered version."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.tasks.precision import compare_precisions, load_checked_model, record_check


@flow(name="check-precision")
def check_precision_flow(
    model: str, data_dir: Path, split: str, precision: str, out: Path, meteor: bool = True
) -> dict:
    loaded = load_checked_model(model)
    check = compare_precisions(quote(loaded), data_dir, split, precision, meteor)
    return record_check(quote(loaded), quote(check), out)
