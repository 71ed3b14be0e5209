"""Readers for each report collection radcap ingests. Pure functions: no Prefect, no I/O beyond reading."""

from radcap.sources.common import Parsed
from radcap.sources.iu import read_iu_csv, read_iu_xml
from radcap.sources.manifest import read_manifest
from radcap.sources.medpix import read_medpix

__all__ = ["Parsed", "read_iu_csv", "read_iu_xml", "read_manifest", "read_medpix"]
