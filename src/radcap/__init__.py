"""radcap: radiology report generation as a Prefect batch pipeline.

Importing radcap does nothing beyond defining code: the offline defaults (project-local Prefect home,
telemetry off, local MLflow store, Keras home) are applied by the entry points that need them, the CLI,
the deployed flows and the MLflow pyfunc loaders, through `radcap.core.runtime.apply_offline_defaults`.
"""

__version__ = "0.3.0"
