"""Report collections to tables: the readers of each format (IU X-Ray XML/CSV, MedPix 2.0, manifests), splits without
leakage, and the embedded phantom sample."""
