"""What `radcap caption` writes: one row per input file, in exactly one of the two tables (captions, caption
rejects), and one row per report a study was given (caption history). All three are Delta Lake tables."""

import pyarrow as pa

from radcap.data_contracts.base import UTC_TIME, Column, Contract

CAPTIONS = Contract(
    name="captions",
    doc="One row per captioned image file. Images of one study (DICOM StudyInstanceUID) share one caption. "
    "Identifiers are DICOM UIDs or salted hashes (settings.caption.identifiers); patient attributes never appear.",
    unique=("source_path",),
    columns=(
        Column(
            "study_id",
            pa.string(),
            nullable=False,
            doc="StudyInstanceUID (or its salted hash); PNG/JPEG: content hash.",
        ),
        Column(
            "image_id", pa.string(), nullable=False, doc="SOPInstanceUID (or its salted hash); PNG/JPEG: content hash."
        ),
        Column("view", pa.string(), nullable=False, isin=("frontal", "lateral", "unknown")),
        Column("source_path", pa.string(), nullable=False, doc="Path relative to the captioned input folder."),
        Column(
            "sha256", pa.string(), nullable=False, doc="SHA-256 of the file's bytes: the idempotency key with the path."
        ),
        Column("caption", pa.string(), doc="The study's generated report (null when withheld: see ood_reason)."),
        Column("model", pa.string(), nullable=False, doc="Registered model name (or bundle folder)."),
        Column("model_version", pa.string(), nullable=False),
        Column("encoder_version", pa.string(), nullable=False),
        Column("captioned_at", UTC_TIME, nullable=False),
        Column(
            "ood_score",
            pa.float32(),
            doc="The study's out-of-domain score (radcap.domain.guard); null for a model saved without a domain guard.",
        ),
        Column(
            "in_domain",
            pa.bool_(),
            doc="False when the study is unlike the model's training images, or a "
            "DICOM's Modality is outside the training modalities.",
        ),
        Column(
            "ood_reason",
            pa.string(),
            doc="Why the study is out of domain (and, with the `withhold` policy, why it has no caption).",
        ),
    ),
)

CAPTION_REJECTS = Contract(
    name="caption_rejects",
    doc="One row per input file that could not be captioned, with the reason (names no patient attribute).",
    unique=("source_path",),
    columns=(
        Column("source_path", pa.string(), nullable=False, doc="Path relative to the captioned input folder."),
        Column("sha256", pa.string(), nullable=False, doc="SHA-256 of the bytes ('' when unreadable)."),
        Column("reason", pa.string(), nullable=False),
        Column("rejected_at", UTC_TIME, nullable=False),
    ),
)

CAPTION_HISTORY = Contract(
    name="caption_history",
    doc="One row per report a study was given, appended when it was written and never rewritten: the audit trail "
    "of re-captioned studies (`radcap history`). Identifiers as in captions; patient attributes never appear.",
    columns=(
        Column("study_id", pa.string(), nullable=False, doc="As in the captions table."),
        Column("caption", pa.string(), doc="The report given (null when withheld)."),
        Column("model", pa.string(), nullable=False),
        Column("model_version", pa.string(), nullable=False),
        Column("encoder_version", pa.string(), nullable=False),
        Column("captioned_at", UTC_TIME, nullable=False),
        Column("in_domain", pa.bool_()),
        Column("ood_reason", pa.string()),
        Column("images", pa.int32(), nullable=False, doc="Image files the report was made from."),
        Column(
            "table_version",
            pa.int64(),
            nullable=False,
            doc="Version of the captions table whose commit wrote the report (`read_captions(OUT, as_of=...)`).",
        ),
    ),
)
