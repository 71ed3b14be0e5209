"""The registered versions of the served captioner: metrics, aliases, the promotion history (read-only)."""

from __future__ import annotations

import streamlit as st

from radcap.web.common import guarded, settings


def models_page() -> None:
    from radcap.registry.store import champion, history, parse_model_uri, version_table

    cfg = settings().app
    name = cfg.model.removeprefix("models:/").split("@")[0].split("/")[0]
    st.title(f"Models: {name}")
    if not cfg.model.startswith("models:/"):
        st.info(f"The page serves a local folder ({cfg.model}), not a registered model.")
        return
    table = version_table(name)
    if table.empty:
        st.info(f"No version of {name} is registered.")
        return
    alias = cfg.model.split("@", 1)[1] if "@" in cfg.model else "champion"
    st.markdown(
        f"**{alias}**: version {champion(name, alias) or '(none)'} · served: version "
        f"{parse_model_uri(cfg.model)[1]} · promotion history (oldest first): "
        f"{', '.join(history(name)) or '(none)'}"
    )
    st.dataframe(table, hide_index=True, key="versions")


guarded(models_page)
