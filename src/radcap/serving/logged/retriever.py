"""The code MLflow logs with every registered retriever ("models from code"). It names only
`radcap.serving.pyfunc_retriever.RadcapRetriever`, a stable public name, so that versions registered today keep
loading after radcap's internal modules move (the logged file is frozen inside each version)."""

import mlflow

from radcap.serving.pyfunc_retriever import RadcapRetriever

mlflow.models.set_model(RadcapRetriever())
