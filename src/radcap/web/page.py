"""`radcap app`: Streamlit's entry script. The pages are in `pages/`; what they compute comes from
`radcap.serving.study` and `radcap.registry.store` (see `radcap.web.common` for what they share)."""

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="radcap", layout="wide")
st.navigation(
    [
        st.Page(PAGES / "study.py", title="Study", url_path="study", default=True),
        st.Page(PAGES / "models.py", title="Models", url_path="models"),
    ]
).run()
