"""MLflow in one place: the model registry (URIs, versions, aliases, registration), tracked runs, the promotion gate."""
