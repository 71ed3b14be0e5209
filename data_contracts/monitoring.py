"""Tables written by `radcap monitor`: drafts against the reports radiologists signed."""

import pyarrow as pa

from radcap.data_contracts.base import UTC_TIME, Column, Contract

MONITOR_STUDIES = Contract(
    name="monitor_studies",
    doc="One row per study with a signed report and the draft its radiologist saw (radcap.monitoring).",
    unique=("study_id",),
    columns=(
        Column("study_id", pa.string(), nullable=False, doc="As in the captions table (UID or its salted hash)."),
        Column("model", pa.string(), nullable=False),
        Column("model_version", pa.string(), nullable=False),
        Column("captioned_at", UTC_TIME, nullable=False, doc="When the draft was written."),
        Column("in_domain", pa.bool_()),
        Column("draft", pa.string(), nullable=False),
        Column("final", pa.string(), nullable=False, doc="The signed report's normalized target."),
        Column("cider", pa.float64(), nullable=False, doc="CIDEr-D of the draft against the signed report."),
        Column("tp", pa.int64(), nullable=False, doc="Observations both name (of the 14 CheXpert ones)."),
        Column("fp", pa.int64(), nullable=False, doc="Observations the draft names and the report does not."),
        Column("fn", pa.int64(), nullable=False, doc="Observations the report names and the draft does not."),
        Column("words_kept", pa.float64(), nullable=False, doc="Share of the draft's words the report kept."),
    ),
)


def _metric(name: str, doc: str) -> tuple[Column, ...]:
    return (
        Column(name, pa.float64(), doc=doc),
        Column(f"{name}_low", pa.float64(), doc=f"Lower end of the bootstrap interval of {name}."),
        Column(f"{name}_high", pa.float64(), doc=f"Upper end of the bootstrap interval of {name}."),
    )


MONITOR_WEEKS = Contract(
    name="monitor_weeks",
    doc="One row per model version and week of drafting: agreement with signed reports, with intervals.",
    unique=("model_version", "week"),
    columns=(
        Column("model_version", pa.string(), nullable=False),
        Column("week", pa.string(), nullable=False, doc="Monday (UTC) of the ISO week the drafts were written."),
        Column("drafted", pa.int64(), nullable=False, doc="Studies drafted."),
        Column("signed", pa.int64(), nullable=False, doc="Of those, studies with a signed report to compare with."),
        Column("ood_rate", pa.float64(), nullable=False, doc="Share of drafted studies flagged out of domain."),
        *_metric("CIDEr", "Mean CIDEr-D of drafts against signed reports."),
        *_metric("clinical_F1", "Micro F1 of the drafts' observations against the signed reports'."),
        *_metric("words_kept", "Mean share of the draft's words kept in the signed report."),
    ),
)
