"""The embedded default dataset as a task: written once, reused while its settings do not change."""

from __future__ import annotations

from pathlib import Path

from radcap.core.settings import SampleSettings
from radcap.ingestion.phantoms import write_pacs_export, write_sample
from radcap.tasks import uncached


# Not Prefect's task cache: it lives in Prefect's storage and would skip writing after the folder was deleted;
# the folder's own stamp says whether this exact sample is there.
@uncached
def make_sample(out: Path, cfg: SampleSettings) -> Path:
    """Write the phantom sample unless this exact one is already there (the settings are its identity)."""
    stamp = out / "sample.json"
    wanted = cfg.model_dump_json()
    if not (stamp.exists() and stamp.read_text(encoding="utf-8") == wanted):
        write_sample(out, cfg)
        stamp.write_text(wanted, encoding="utf-8")
    return out


@uncached
def make_pacs_export(sample: Path, out: Path, studies: int) -> Path:
    """A small PACS-like DICOM export of new phantom studies, for the main job's captioning step."""
    if not out.exists():
        write_pacs_export(sample, out, studies)
    return out
