"""The single source of truth for every table's columns and types."""

from data_contracts.base import Column, Contract, ContractError
from data_contracts.ingest import IMAGES, REJECTS, REPORTS

ALL = (REPORTS, IMAGES, REJECTS)

__all__ = ["ALL", "Column", "Contract", "ContractError", "IMAGES", "REJECTS", "REPORTS"]
