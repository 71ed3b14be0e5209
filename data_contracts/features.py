"""The feature store written by `radcap features` and the labelled images used to pretrain the encoder."""

import pyarrow as pa

from radcap.data_contracts.base import Column, Contract

POOLED_DIM = 1024
GRID_SIDE = 7  # DenseNet-121 at 224 px
GRID_CELLS = GRID_SIDE * GRID_SIDE
GRID_SIZE = GRID_CELLS * POOLED_DIM
EARLY_DIM = 2 * (256 + 512)  # mean and std of each channel of DenseNet-121's pool2_relu and pool3_relu

FEATURES = Contract(
    name="features",
    doc="One row per (image file content, encoder): CheXNet bottleneck features. Stored as Parquet parts in "
    "`DIR/features/`; an image whose sha256 and encoder version are already stored is never recomputed.",
    columns=(
        Column("image_id", pa.string(), nullable=False),
        Column("sha256", pa.string(), nullable=False, doc="SHA-256 of the image file's bytes."),
        Column("encoder", pa.string(), nullable=False, doc="Encoder name, e.g. chexnet-densenet121."),
        Column("encoder_version", pa.string(), nullable=False, doc="Registry version, h5 hash or 'random-seedN'."),
        Column(
            "pooled", pa.list_(pa.float32(), POOLED_DIM), nullable=False, doc="Global-average-pooled 1,024-d vector."
        ),
        Column(
            "grid",
            pa.list_(pa.float16(), GRID_SIZE),
            nullable=False,
            doc="7x7x1,024 spatial grid (row-major, channels last), float16, for attention decoders.",
        ),
        Column(
            "early",
            pa.list_(pa.float32(), EARLY_DIM),
            doc="Early-layer statistics (each channel's mean and standard deviation over positions in DenseNet-121's "
            "pool2_relu and pool3_relu), for the out-of-domain guard. Null in rows written before radcap 0.4; such "
            "rows are encoded again by the next `radcap features` run.",
        ),
    ),
)

LABELLED_IMAGES = Contract(
    name="labelled_images",
    doc="Images with the labels the encoder is pretrained on. `labels` are 'namespace:value' strings; "
    "`namespaces` lists which label namespaces this image is annotated for (others are masked in the loss).",
    unique=("image_id",),
    columns=(
        Column("image_id", pa.string(), nullable=False),
        Column("path", pa.string(), nullable=False),
        Column("split", pa.string(), nullable=False, isin=("train", "val", "test", "unassigned")),
        Column("group_id", pa.string(), nullable=False),
        Column("labels", pa.list_(pa.string()), nullable=False),
        Column("namespaces", pa.list_(pa.string()), nullable=False),
    ),
)
