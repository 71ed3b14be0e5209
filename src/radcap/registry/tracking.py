"""MLflow tracking in one place: runs are opened by `tracked_run`, epochs and figures logged by the helpers
below, so every stage logs the same way (parameters, per-epoch metrics, plots as artifacts)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from radcap.core.training import EpochRecord


def metric_name(name: str) -> str:
    """MLflow metric names take letters, digits and _-./ only: 'BLEU-4' -> 'BLEU_4', 'R@1' -> 'R_at_1'."""
    return re.sub(r"[^0-9A-Za-z_./ ]", "_", name.replace("@", "_at_").replace("-", "_"))


@contextmanager
def tracked_run(experiment: str, run_name: str, params: dict) -> Iterator[str]:
    """An MLflow run in `experiment` with `params` logged; yields the run id."""
    import mlflow

    _create_experiment(experiment)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()})
        yield run.info.run_id


def _create_experiment(experiment: str) -> None:
    """A new experiment keeps its artifacts in the workspace beside the tracking database (MLflow's own default
    is ./mlruns under whatever folder the command ran in, so models would scatter across folders)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///") or mlflow.get_experiment_by_name(experiment) is not None:
        return  # a tracking server decides where artifacts go
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    try:
        mlflow.create_experiment(experiment, artifact_location=(database.parent / "artifacts" / experiment).as_uri())
    except MlflowException:  # another process created it first
        pass


def log_metrics(metrics: dict, step: int | None = None, prefix: str = "") -> None:
    import mlflow

    floats = {
        metric_name(f"{prefix}{k}"): float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if floats:
        mlflow.log_metrics(floats, step=step)


def epoch_logger(logger) -> Callable[[EpochRecord], None]:
    """Each epoch's metrics to the active MLflow run (step = epoch) and to `logger`."""

    def log(record: EpochRecord) -> None:
        log_metrics({**record.metrics, "epoch_seconds": record.seconds}, step=record.epoch)
        logger.info("epoch %d: %s", record.epoch, {k: round(v, 4) for k, v in record.metrics.items()})

    return log


def log_figure(figure, name: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(figure, name)
    plt.close(figure)


def log_text(text: str, name: str) -> None:
    import mlflow

    mlflow.log_text(text, name)


def log_dict(data: dict, name: str) -> None:
    import mlflow

    mlflow.log_dict(data, name)


def active_run_id() -> str:
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no MLflow run is active (open one with tracked_run)")
    return run.info.run_id


def latest_logged_dict(experiment: str, params: dict[str, str], name: str) -> tuple[dict | list, str] | None:
    """Artifact `name` (a JSON dict or list) of the newest run of `experiment` with these params, and the run's
    start time; None when there is none (the Models page reads `radcap monitor`'s weekly table this way)."""
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        return None
    where = " and ".join(f"params.{k} = '{v}'" for k, v in params.items())
    runs = mlflow.search_runs(
        experiment_names=[experiment], filter_string=where, order_by=["start_time DESC"], max_results=1
    )
    if runs.empty:
        return None
    run = runs.iloc[0]
    return mlflow.artifacts.load_dict(f"runs:/{run['run_id']}/{name}"), str(run["start_time"])
