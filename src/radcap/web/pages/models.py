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
    agreement_trend(name)


def agreement_trend(name: str) -> None:
    """`radcap monitor`'s newest weekly table: drafts against the reports radiologists signed."""
    import pandas as pd

    from radcap.registry.tracking import latest_logged_dict

    st.subheader("Agreement with signed reports")
    found = latest_logged_dict(settings().tracking.monitor, {"model": name}, "weeks.json")
    if found is None or not found[0]:
        st.info("No `radcap monitor` run for this model yet.")
        return
    weeks = pd.DataFrame(found[0])
    st.caption(f"From the monitor run of {found[1]}: per model version and week of drafting (bootstrap intervals).")
    for metric in ("words_kept", "CIDEr", "clinical_F1", "ood_rate"):
        chart = weeks.pivot_table(index="week", columns="model_version", values=metric)
        st.markdown(f"**{metric}**")
        st.line_chart(chart, height=180)
    st.dataframe(weeks, hide_index=True, key="agreement")


guarded(models_page)
