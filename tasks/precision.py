"""`radcap check-precision` tasks: a captioner's reports (or a retriever's answers) from fp32 and lower-precision
features of the same held-out studies, compared; a pass is recorded on the registered version."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.logging import get_run_logger

from radcap.captioning.bundle import CaptionerBundle, load_captioner
from radcap.captioning.data import load_caption_sets
from radcap.core.errors import RadcapError
from radcap.core.io import write_json
from radcap.evaluation.fidelity import fidelity_check, retrieval_fidelity_check
from radcap.imaging.precision import PRECISIONS_TAG, accepted_precisions, store_version
from radcap.registry import store as registry
from radcap.registry.store import LoadedModel
from radcap.retrieval.retriever import LoadedRetriever, load_retriever
from radcap.tasks import registry_task, uncached


@registry_task
def load_checked_model(uri: str) -> LoadedModel[CaptionerBundle] | LoadedRetriever:
    """The captioner or the retriever at `uri` (a precision is accepted per registered version of either)."""
    try:
        return load_captioner(uri)
    except RadcapError as captioner_error:
        try:
            return load_retriever(uri)
        except RadcapError:
            raise RadcapError(f"{captioner_error} (nor a retriever)") from None


@uncached
def compare_precisions(
    loaded: LoadedModel[CaptionerBundle] | LoadedRetriever, data_dir: Path, split: str, precision: str, meteor: bool
) -> dict:
    config = loaded.bundle.config
    attention = isinstance(loaded.bundle, CaptionerBundle) and loaded.bundle.model.attention
    sets = {
        p: load_caption_sets(
            data_dir, store_version(config.encoder_version, p), (split,), config.max_views, grid=attention
        )[split]
        for p in ("fp32", precision)
    }
    if isinstance(loaded, LoadedRetriever):
        check = retrieval_fidelity_check(loaded.bundle, loaded.index, sets["fp32"], sets[precision], precision)
    else:
        assert isinstance(loaded.bundle, CaptionerBundle)
        check = fidelity_check(loaded.bundle, sets["fp32"], sets[precision], precision, meteor)
    get_run_logger().info("precision check of %s at %s on %s/%s: %s", loaded.uri, precision, data_dir, split, check)
    return {"model": loaded.uri, "data_dir": str(data_dir), "split": split, **check}


@registry_task
def record_check(loaded: LoadedModel, check: dict, out: Path) -> dict:
    """Write the check; when it passed, add its precision to the version's accepted ones."""
    write_json(check, out)
    accepted = accepted_precisions(loaded)
    if check["passed"] and loaded.version != "local" and check["precision"] not in accepted:
        accepted = [*accepted, check["precision"]]
        registry.tag_version(loaded.name, loaded.version, {PRECISIONS_TAG: json.dumps(accepted[1:])})
    return {**check, "accepted_precisions": accepted, "written": str(out)}
