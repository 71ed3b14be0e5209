"""Drafts paired with the reports radiologists signed: which draft each radiologist saw.

A study may have been drafted more than once (a re-captioned study, a new model version). The draft a signed
report is compared with is the newest one written before the report was signed; a draft written after it was
signed was never seen and is not paired (a report without a signing time pairs with the newest draft). Study ids
are matched as the captions table writes them: DICOM UIDs, or their salted hashes (`caption.identifiers`).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd


def drafts_table(history: pd.DataFrame) -> pd.DataFrame:
    """Every draft written (caption history rows): study_id, draft, model, model_version, captioned_at, in_domain."""
    drafts = history.rename(columns={"caption": "draft"})
    return drafts[["study_id", "draft", "model", "model_version", "captioned_at", "in_domain"]].reset_index(drop=True)


def pair_with_signed(drafts: pd.DataFrame, reports: pd.DataFrame, study_key: Callable[[str], str]) -> pd.DataFrame:
    """One row per study with a signed report and a draft seen before signing: the drafts' columns, `final` (the
    report's normalized target) and `reported_at`."""
    signed = reports[reports["report_status"].notna()]
    signed = pd.DataFrame(
        {
            "study_id": [study_key(str(s)) for s in signed["study_id"]],
            "final": signed["target"].to_numpy(),
            "reported_at": pd.to_datetime(signed["reported_at"], utc=True).to_numpy(),
        }
    )
    merged = drafts[drafts["draft"].notna()].merge(signed, on="study_id", how="inner")
    merged["reported_at"] = pd.to_datetime(merged["reported_at"], utc=True)
    seen = merged["reported_at"].isna() | (pd.to_datetime(merged["captioned_at"], utc=True) <= merged["reported_at"])
    merged = merged[seen].sort_values(["study_id", "captioned_at"], kind="stable")
    return merged.groupby("study_id", sort=True).tail(1).reset_index(drop=True)
