"""`radcap check-precision`: may this captioner read features of a lower-precision encoder build? Its reports
on held-out studies from both precisions are compared; a pass is recorded on its registered version."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.tasks.evaluate import load_captioner
from radcap.tasks.precision import compare_precisions, record_check


@flow(name="check-precision")
def check_precision_flow(model: str, data_dir: Path, split: str, precision: str, out: Path, meteor: bool = True) -> dict:
    loaded = load_captioner(model)
    check = compare_precisions(quote(loaded), data_dir, split, precision, meteor)
    return record_check(quote(loaded), quote(check), out)
