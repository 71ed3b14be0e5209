"""The retrieval index (known images and reports embedded by the dual encoder) and search results."""

import pyarrow as pa

from radcap.data_contracts.base import Column, Contract

RETRIEVAL_INDEX = Contract(
    name="retrieval_index",
    doc="One row per known image (study) or report, embedded in the dual encoder's joint space. Exact search: "
    "a matrix product with the unit-length query embeddings.",
    unique=("kind", "item_id"),
    columns=(
        Column("item_id", pa.string(), nullable=False, doc="report_id for both kinds (a study's images are one item)."),
        Column("kind", pa.string(), nullable=False, isin=("image", "report")),
        Column("text", pa.string(), nullable=False, doc="The report (normalized target)."),
        Column("source", pa.string(), nullable=False, doc="Image path(s) of the study, ';'-separated ('' if unknown)."),
        Column("split", pa.string(), nullable=False),
        Column("embedding", pa.list_(pa.float32()), nullable=False, doc="Unit vector of the retriever's dimension."),
    ),
)

SEARCH_RESULTS = Contract(
    name="search_results",
    doc="`radcap search` / `radcap retrieve`: for each query, the top-k known items with their scores.",
    columns=(
        Column("query", pa.string(), nullable=False, doc="The text query, or the query image's source path."),
        Column("query_study_id", pa.string(), doc="For image queries: study id (DICOM UID or its hash)."),
        Column("rank", pa.int32(), nullable=False),
        Column("item_id", pa.string(), nullable=False),
        Column("kind", pa.string(), nullable=False, isin=("image", "report")),
        Column("score", pa.float32(), nullable=False, doc="Cosine similarity in the joint space."),
        Column("text", pa.string(), nullable=False),
        Column("source", pa.string(), nullable=False),
        Column("model", pa.string(), nullable=False),
        Column(
            "encoder_version",
            pa.string(),
            doc="For image queries: the encoder that encoded them, "
            "VERSION@PRECISION below fp32 (radcap.imaging.precision).",
        ),
        Column(
            "ood_score", pa.float32(), doc="For image queries: the study's out-of-domain score (radcap.domain.guard)."
        ),
        Column("in_domain", pa.bool_(), doc="For image queries: False when the study is unlike the training images."),
    ),
)
