"""`radcap check-precision` tasks: a captioner's reports from fp32 and lower-precision features of the same
held-out studies, compared; a pass is recorded on the registered version."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.logging import get_run_logger

from radcap import registry
from radcap.caption_data import load_caption_sets
from radcap.io import write_json
from radcap.precision import PRECISIONS_TAG, accepted_precisions, fidelity_check, store_version
from radcap.registry import LoadedModel
from radcap.tasks import registry_task, uncached


@uncached
def compare_precisions(loaded: LoadedModel, data_dir: Path, split: str, precision: str, meteor: bool) -> dict:
    config, attention = loaded.bundle.config, loaded.bundle.model.attention
    sets = {p: load_caption_sets(data_dir, store_version(config.encoder_version, p), (split,), config.max_views,
                                 grid=attention)[split] for p in ("fp32", precision)}
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
