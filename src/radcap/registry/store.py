"""The MLflow model registry, in one place: resolving `models:/` URIs (and local bundle folders) to loaded
models, registering new versions, and the champion alias with its history.

* A URI names a version (`models:/NAME/N`), an alias (`models:/NAME@champion`, resolved once, so what is
  written in outputs is the version really loaded) or the newest version (`models:/NAME/latest`).
* Captioners and retrievers are pyfunc models logged as code (`radcap/serving/`), with their bundle
  (JSON config, JSON vocabulary, HDF5 weights) as artifacts; encoders are Keras models (`.keras`).
* The champion history is a registered-model tag (`champion_history`, a JSON list of versions, oldest first),
  so `radcap rollback` can restore the previous champion even after several promotions.
Retries on a registry that drops a connection belong to the tasks that call these functions
(`radcap.tasks.registry_task`), never here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import pandas as pd

from radcap.core.errors import RadcapError
from radcap.core.logs import library_chatter
from radcap.core.model_config import CAPTIONER_FORMATS, CONFIG_FILE, CaptionerConfig

Bundle = TypeVar("Bundle")
HISTORY_TAG = "champion_history"
LOGGED_CODE = Path(__file__).resolve().parents[1] / "serving" / "logged"  # what each pyfunc logs as its code


def client():
    import mlflow

    return mlflow.MlflowClient()


def parse_model_uri(uri: str) -> tuple[str, str]:
    """models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest -> (name, version number)."""
    from mlflow.exceptions import MlflowException

    if not uri.startswith("models:/"):
        raise RadcapError(f"{uri}: not a models:/ URI")
    rest = uri.removeprefix("models:/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, str(client().get_model_version_by_alias(name, alias).version)
        name, _, ref = rest.partition("/")
        if ref in ("", "latest"):
            versions = client().search_model_versions(f"name='{name}'")
            if not versions:
                raise RadcapError(f"{uri}: no version of '{name}' is registered")
            return name, str(max(int(v.version) for v in versions))
        client().get_model_version(name, ref)
        return name, ref
    except MlflowException as exc:
        raise RadcapError(f"{uri}: {exc.message}") from exc


def download(name: str, version: str) -> Path:
    """The artifacts of a registered version, as a local folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(client().get_model_version(name, version).source))
    except MlflowException as exc:
        raise RadcapError(f"models:/{name}/{version}: {exc.message}") from exc


def _bundle_folder(local: Path, formats: tuple[str, ...], what: str, label: str) -> Path:
    """The folder under `local` whose config.json has one of `formats`."""
    for config in sorted(local.rglob(CONFIG_FILE)):
        try:
            if json.loads(config.read_text(encoding="utf-8")).get("format") in formats:
                return config.parent
        except (OSError, ValueError, AttributeError):
            continue
    raise RadcapError(f"{label}: holds no radcap {what}")


@dataclass
class LoadedModel(Generic[Bundle]):
    """A model as loaded (a captioner's or a retriever's bundle), with the name and version to stamp outputs with."""

    bundle: Bundle
    name: str  # registered name, or the bundle folder
    version: str  # registry version number, or "local"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version != "local" else self.name


def resolve_bundle(uri: str, formats: tuple[str, ...], what: str) -> tuple[Path, str, str]:
    """(bundle folder, name, version) of a local folder or a models:/ URI whose config has one of `formats`."""
    local = Path(uri)
    if local.is_dir():
        return _bundle_folder(local, formats, what, uri), str(local), "local"
    if not uri.startswith("models:/"):
        raise RadcapError(f"{uri}: neither a {what} folder nor a models:/ URI")
    name, version = parse_model_uri(uri)
    return _bundle_folder(download(name, version), formats, what, f"models:/{name}/{version}"), name, version


# What a logged pyfunc needs installed, pinned to the versions in use. Given explicitly: MLflow would
# otherwise infer it by importing the model's code in a subprocess (10-20 s per registration).
SERVING_REQUIREMENTS = (
    "keras",
    "numpy",
    "pandas",
    "pyarrow",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pillow",
    "nltk",
    "h5py",
    "pydantic",
    "pydantic-settings",
    "pandera",
    "scikit-learn",
)


def pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("tensorflow-cpu", "tensorflow", *SERVING_REQUIREMENTS):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def register_pyfunc(code: str, artifacts: dict[str, Path], registered_name: str, tags: dict, signature) -> str:
    """Log a pyfunc model as code (`src/radcap/serving/logged/<kind>.py`, naming the class in
    `radcap.serving.pyfunc_<kind>`) with `artifacts` and its `signature` in the active MLflow run, register it
    under `registered_name`, tag the version; return the version number."""
    import mlflow

    with library_chatter():  # "Successfully registered model ...": to the log file
        info = mlflow.pyfunc.log_model(
            name=code.removeprefix("pyfunc_"),
            python_model=str(LOGGED_CODE / f"{code.removeprefix('pyfunc_')}.py"),
            artifacts={k: str(v) for k, v in artifacts.items()},
            registered_model_name=registered_name,
            signature=signature,
            pip_requirements=pip_requirements(),
        )
    version = str(info.registered_model_version)
    tag_version(registered_name, version, tags)
    return version


def register_keras(model, registered_name: str, tags: dict) -> str:
    """Log a Keras model (`.keras`, loadable in safe mode) with its tensor signature in the active run, register
    it, tag the version."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(shape) -> Schema:
        return Schema([TensorSpec(np.dtype(np.float32), tuple(-1 if d is None else d for d in shape))])

    signature = ModelSignature(inputs=spec(model.input_shape), outputs=spec(model.output_shape))
    with library_chatter():
        info = mlflow.tensorflow.log_model(
            model,
            name="encoder",
            registered_model_name=registered_name,
            signature=signature,
            pip_requirements=pip_requirements(),
        )
    version = str(info.registered_model_version)
    tag_version(registered_name, version, tags)
    return version


def newest_version_tagged(name: str, key: str, value: str) -> str | None:
    """The newest version of `name` whose tag `key` equals `value` (e.g. the same training inputs)."""
    found = [int(v.version) for v in client().search_model_versions(f"name='{name}'") if v.tags.get(key) == value]
    return str(max(found)) if found else None


def champion(name: str, alias: str = "champion") -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def history(name: str) -> list[str]:
    tags = client().get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def version_table(name: str) -> pd.DataFrame:
    """Every registered version of `name`, newest first: when, architecture, validation metrics (training's
    selection), the held-out metrics and outcome of its promotion decision, its aliases. Read-only."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client().search_model_versions(f"name='{name}'")
        # search results carry no aliases; the registered model has them all
        aliases = client().get_registered_model(name).aliases if versions else {}
    except MlflowException as exc:
        raise RadcapError(f"{name}: {exc.message}") from exc
    rows = []
    for v in sorted(versions, key=lambda v: -int(v.version)):
        tags, promotion = v.tags, {}
        try:
            promotion = json.loads(tags.get("promotion", "{}"))
        except ValueError:
            pass
        held_out = promotion.get("metrics", {}).get(str(v.version), {})
        rows.append(
            {
                "version": int(v.version),
                "aliases": ", ".join(sorted(a for a, n in aliases.items() if str(n) == str(v.version))),
                "registered": pd.Timestamp(v.creation_timestamp, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"),
                "architecture": tags.get("architecture", ""),
                **{k: _number(tags[k]) for k in sorted(tags) if k.startswith("val_")},
                **{f"{promotion.get('split', 'test')}_{k}": x for k, x in held_out.items() if k != "reports"},
                "promotion": f"{promotion['outcome']}: {promotion.get('reason', '')}" if promotion else "",
            }
        )
    return pd.DataFrame(rows)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def set_champion(name: str, version: str, alias: str = "champion", rolled_back: bool = False) -> None:
    """Move the alias and record it: a promotion appends to the history, a rollback drops the last entry."""
    past = history(name)
    past = past[:-1] if rolled_back else [*past, version]
    client().set_registered_model_alias(name, alias, version)
    client().set_registered_model_tag(name, HISTORY_TAG, json.dumps(past))


def version_tags(name: str, version: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client().get_model_version(name, version).tags)
    except MlflowException as exc:
        raise RadcapError(f"models:/{name}/{version}: {exc.message}") from exc


def tag_version(name: str, version: str, tags: dict) -> None:
    for key, value in tags.items():
        client().set_model_version_tag(name, version, key, value if isinstance(value, str) else json.dumps(value))


def captioner_signature(decoding):
    """Image paths, image bytes or feature vectors in, one caption per study out; decoding settings as params
    whose defaults are the bundle's own (MLflow fills them in when a request gives none: they must be the values
    chosen on validation, not the settings' starting point)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "image_path", required=False),
            ColSpec("string", "image_base64", required=False),
            ColSpec("string", "study_id", required=False),
            ColSpec("string", "view", required=False),
            ColSpec(Array("double"), "pooled", required=False),
            ColSpec(Array("double"), "grid", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "study_id"),
            ColSpec("string", "caption"),
            ColSpec("double", "ood_score", required=False),
            ColSpec("boolean", "in_domain", required=False),
            ColSpec("string", "ood_reason", required=False),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("beam_width", "long", int(decoding.beam_width)),
            ParamSpec("length_penalty", "double", float(decoding.length_penalty)),
            ParamSpec("no_repeat_ngram", "long", int(decoding.no_repeat_ngram)),
            ParamSpec("consensus_samples", "long", int(decoding.consensus_samples)),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def register_captioner(folder: Path, registered_name: str, tags: dict) -> str:
    """A saved captioner bundle as a new version of `registered_name` (in the active MLflow run)."""
    config = CaptionerConfig.load(folder / CONFIG_FILE, CAPTIONER_FORMATS)
    return register_pyfunc(
        "pyfunc_captioner",
        {"captioner": folder},
        registered_name,
        {**tags, "architecture": config.architecture},
        captioner_signature(config.decoding),
    )


def retriever_signature():
    """A text query (report-to-image search) or one image's pooled features per row in; (query, rank) rows out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "text", required=False), ColSpec(Array("double"), "pooled", required=False)])
    columns: list[ColSpec | TensorSpec] = [ColSpec("string", n) for n in ("query", "item_id", "kind", "text", "source")]
    outputs = Schema([*columns, ColSpec("integer", "rank"), ColSpec("float", "score")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("top_k", "long", 5)]))


def register_retriever(folder: Path, index: Path, registered_name: str, tags: dict) -> str:
    return register_pyfunc(
        "pyfunc_retriever", {"retriever": folder, "index": index}, registered_name, tags, retriever_signature()
    )
