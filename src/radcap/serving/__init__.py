"""MLflow pyfunc wrappers of the saved models (logged as code: nothing pickled)."""
