"""The code MLflow logs with every registered captioner ("models from code"). It names only
`radcap.serving.pyfunc_captioner.RadcapCaptioner`, a stable public name, so that versions registered today keep
loading after radcap's internal modules move (the logged file is frozen inside each version)."""

import mlflow

from radcap.serving.pyfunc_captioner import RadcapCaptioner

mlflow.models.set_model(RadcapCaptioner())
