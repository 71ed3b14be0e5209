"""MLflow model registry helpers: which version a URI names, the champion alias and its history.

The champion history is a registered-model tag (`champion_history`, a JSON list of versions, oldest
first), so `radcap rollback` can restore the previous champion even after several promotions.
"""

from __future__ import annotations

import json

from radcap.errors import RadcapError

HISTORY_TAG = "champion_history"


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


def champion(name: str, alias: str = "champion") -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def history(name: str) -> list[str]:
    tags = client().get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def set_champion(name: str, version: str, alias: str = "champion", rolled_back: bool = False) -> None:
    """Move the alias and record it: a promotion appends to the history, a rollback drops the last entry."""
    past = history(name)
    past = past[:-1] if rolled_back else [*past, version]
    client().set_registered_model_alias(name, alias, version)
    client().set_registered_model_tag(name, HISTORY_TAG, json.dumps(past))


def tag_version(name: str, version: str, tags: dict) -> None:
    for key, value in tags.items():
        client().set_model_version_tag(name, version, key, value if isinstance(value, str) else json.dumps(value))
