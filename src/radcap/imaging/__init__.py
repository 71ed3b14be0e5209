"""Images to features: decoding and normalization, the CheXNet encoders and their precisions, the Parquet feature store,
encoder pretraining."""
