"""radcap: radiology report generation as a Prefect batch pipeline.

Importing the package applies the offline defaults (project-local Prefect home, telemetry off, local
MLflow store) before Prefect, MLflow or Keras are imported, so a user never has to export anything.
Every variable is only set when the user has not set it, so real servers are one export away.
"""

from radcap.runtime import apply_offline_defaults

apply_offline_defaults()

__version__ = "0.1.0"
