"""The single source of truth for every table's columns and types."""

# One name per file: this folder installs as radcap.data_contracts (pyproject.toml); imported as
# `data_contracts` from the repository root, every module in it would load again under a second name.
if __name__ != "radcap.data_contracts":
    raise ImportError(f"import radcap.data_contracts, not {__name__} (the folder installs under radcap's namespace)")


from radcap.data_contracts.base import Column, Contract, ContractError
from radcap.data_contracts.captions import CAPTION_HISTORY, CAPTION_REJECTS, CAPTIONS
from radcap.data_contracts.features import FEATURES, LABELLED_IMAGES
from radcap.data_contracts.ingest import IMAGES, PENDING, REJECTS, REPORTS
from radcap.data_contracts.monitoring import MONITOR_STUDIES, MONITOR_WEEKS
from radcap.data_contracts.retrieval import RETRIEVAL_INDEX, SEARCH_RESULTS

ALL = (
    REPORTS,
    IMAGES,
    REJECTS,
    PENDING,
    FEATURES,
    LABELLED_IMAGES,
    CAPTIONS,
    CAPTION_REJECTS,
    CAPTION_HISTORY,
    RETRIEVAL_INDEX,
    SEARCH_RESULTS,
    MONITOR_STUDIES,
    MONITOR_WEEKS,
)

__all__ = [
    "ALL",
    "CAPTIONS",
    "CAPTION_HISTORY",
    "CAPTION_REJECTS",
    "FEATURES",
    "IMAGES",
    "LABELLED_IMAGES",
    "MONITOR_STUDIES",
    "MONITOR_WEEKS",
    "PENDING",
    "REJECTS",
    "REPORTS",
    "RETRIEVAL_INDEX",
    "SEARCH_RESULTS",
    "Column",
    "Contract",
    "ContractError",
]
