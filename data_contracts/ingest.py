"""Tables written by the ingestion flow (`radcap ingest`)."""

import pyarrow as pa

from radcap.data_contracts.base import UTC_TIME, Column, Contract

SPLITS = ("train", "val", "test", "unassigned")
SPLIT_SOURCES = ("r2gen", "official", "manifest", "hash", "none")
DATASETS = ("iu-xray", "medpix2", "manifest", "hl7", "fhir", "dicom-sr")
SIGNED_STATUSES = ("final", "amended")
VIEWS = ("frontal", "lateral", "unknown")

REPORTS = Contract(
    name="reports",
    doc="One row per report: the unit that has one target text. IU: a study (all its views). "
    "MedPix: one image caption (the clinical case is the study). Manifest: one study and caption.",
    unique=("report_id",),
    columns=(
        Column("report_id", pa.string(), nullable=False, doc="Unique id of the report (IU: `CXR<uid>`)."),
        Column("study_id", pa.string(), nullable=False, doc="Study (IU) or clinical case (MedPix)."),
        Column("group_id", pa.string(), nullable=False, doc="Patient/case key that never spans two splits."),
        Column("dataset", pa.string(), nullable=False, isin=DATASETS),
        Column("source", pa.string(), nullable=False, doc="Input file (and line or row) the report came from."),
        Column("split", pa.string(), nullable=False, isin=SPLITS),
        Column("split_source", pa.string(), nullable=False, isin=SPLIT_SOURCES),
        Column("indication", pa.string(), doc="Raw indication / clinical history."),
        Column("comparison", pa.string(), doc="Raw comparison section."),
        Column("findings_raw", pa.string(), doc="Findings as written."),
        Column("impression_raw", pa.string(), doc="Impression as written."),
        Column("caption_raw", pa.string(), doc="Caption as written (MedPix, manifest)."),
        Column("findings", pa.string(), doc="Findings after the text rules."),
        Column("impression", pa.string(), doc="Impression after the text rules."),
        Column("target", pa.string(), nullable=False, doc="Normalized training target (see TextRules)."),
        Column(
            "target_section",
            pa.string(),
            nullable=False,
            isin=("impression", "findings", "findings+impression", "caption"),
        ),
        Column("mesh", pa.list_(pa.string()), nullable=False, doc="IU MeSH major terms (empty elsewhere)."),
        Column("n_images", pa.int32(), nullable=False, doc="Images referenced by the report."),
        Column("reported_at", UTC_TIME, doc="When the report was signed (signed clinical reports; null elsewhere)."),
        Column(
            "report_status",
            pa.string(),
            isin=SIGNED_STATUSES,
            doc="final or amended for signed clinical reports (HL7, FHIR, DICOM SR); null for research collections.",
        ),
    ),
)

IMAGES = Contract(
    name="images",
    doc="One row per image referenced by a report.",
    unique=("image_id",),
    columns=(
        Column("image_id", pa.string(), nullable=False, doc="Image name without extension (IU: NLMCXR name)."),
        Column("report_id", pa.string(), nullable=False),
        Column("study_id", pa.string(), nullable=False),
        Column("dataset", pa.string(), nullable=False, isin=DATASETS),
        Column("split", pa.string(), nullable=False, isin=SPLITS),
        Column("path", pa.string(), doc="Absolute path of the image file; null when it was not found."),
        Column("view", pa.string(), nullable=False, isin=VIEWS, doc="Chest X-ray projection where known."),
        Column("modality", pa.string(), doc="CX, CT, MR... where known."),
        Column("plane", pa.string(), doc="Axial, coronal, PA... where known (MedPix)."),
        Column("location", pa.string(), doc="Body location (MedPix `Location`)."),
        Column("location_category", pa.string(), doc="Body region (MedPix `Location Category`)."),
        Column(
            "labels",
            pa.list_(pa.string()),
            nullable=False,
            doc="Image labels given by the source as 'namespace:value' (a manifest's `labels` column); "
            "labels derived from reports and metadata are added by `radcap.imaging.labels`.",
        ),
    ),
)

REJECTS = Contract(
    name="rejects",
    doc="One row per input that could not be used, with the reason. Rows + rejects = inputs seen.",
    columns=(
        Column("source", pa.string(), nullable=False, doc="File (and line/row) that was rejected."),
        Column("item", pa.string(), doc="Id inside the file, where one could be read."),
        Column("kind", pa.string(), nullable=False, isin=("report", "image")),
        Column("stage", pa.string(), nullable=False),
        Column("reason", pa.string(), nullable=False),
    ),
)

PENDING = Contract(
    name="pending",
    doc="Signed reports whose study has no images yet (`radcap ingest --format hl7|fhir|dicom-sr`): tried again "
    "by every later run, from this table, until paired or too old. Identifiers other than the Study Instance UID "
    "are keyed hashes; patient attributes never appear.",
    unique=("report_key",),
    columns=(
        Column("report_key", pa.string(), nullable=False, doc="Hash of the report's format, id, study and text."),
        Column("source", pa.string(), nullable=False, doc="Input file (and message or entry) it came from."),
        Column("item", pa.string(), doc="The report's id in its format (message control id, resource id, SOP UID)."),
        Column("format", pa.string(), nullable=False, isin=("hl7", "fhir", "dicom-sr")),
        Column("status", pa.string(), nullable=False, isin=SIGNED_STATUSES),
        Column("study_uid", pa.string(), doc="Study Instance UID the report names."),
        Column("accession_key", pa.string(), doc="Keyed hash of the accession number (pairs it on a later run)."),
        Column("group_key", pa.string(), doc="Keyed hash of the patient id: the split group."),
        Column("findings_raw", pa.string()),
        Column("impression_raw", pa.string()),
        Column("reported_at", UTC_TIME),
        Column("first_seen", UTC_TIME, nullable=False, doc="When a run first saw the report."),
        Column("reason", pa.string(), nullable=False, doc="Why it is pending."),
    ),
)
