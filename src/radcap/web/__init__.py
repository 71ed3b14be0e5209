"""The web page for one study (`radcap app`): a Streamlit script over `radcap.serving.study` and the registry."""

from pathlib import Path

PAGE = Path(__file__).resolve().parent / "page.py"
