"""The code MLflow logs with every registered encoder ("models from code"). It names only
`radcap.serving.pyfunc_encoder.RadcapOptimizedEncoder`, a stable public name, so that versions registered today
keep loading after radcap's internal modules move (the logged file is frozen inside each version)."""

import mlflow

from radcap.serving.pyfunc_encoder import RadcapOptimizedEncoder

mlflow.models.set_model(RadcapOptimizedEncoder())
