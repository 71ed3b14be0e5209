"""What the pages share: the settings, the warm model, the error boundary, images for the browser."""

from __future__ import annotations

import logging

import numpy as np
import streamlit as st
from PIL import Image

from radcap.core.errors import RadcapError
from radcap.core.runtime import apply_offline_defaults, import_tensorflow_quietly

apply_offline_defaults()  # the pages are entry points: Streamlit runs them directly
log = logging.getLogger("radcap.app")


@st.cache_resource(show_spinner="Loading the model...")
def load_reader(model: str, retriever: str | None, default_retriever: bool, neighbours: int):
    """The warm StudyReader, shared by every session; (reader, note about the retriever)."""
    import_tensorflow_quietly()
    from radcap.captioning.bundle import load_captioner
    from radcap.retrieval.retriever import load_retriever
    from radcap.serving.study import StudyReader

    captioner, note = load_captioner(model), None
    loaded_retriever = None
    if retriever:
        try:
            loaded_retriever = load_retriever(retriever)
        except RadcapError as exc:
            if not default_retriever:
                raise
            note = f"No retriever registered ({retriever}), so no closest training reports: {exc}"
    reader = StudyReader(captioner, loaded_retriever, neighbours)
    reader.warm_up()
    return reader, note


def settings():
    from radcap.core.settings import get_settings

    get_settings.cache_clear()  # RADCAP_APP__* may differ between runs of a test session
    return get_settings()


def display(pixels: np.ndarray, max_side: int = 768) -> np.ndarray:
    """Decoded [0, 1] pixels as uint8 for the browser, no larger than `max_side`."""
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8))
    image.thumbnail((max_side, max_side))
    return np.asarray(image)


@st.cache_data(ttl=60, show_spinner=False)
def degraded_note(model: str) -> str | None:
    """Why the served registered version is tagged `degraded` by `radcap monitor`, or None."""
    from radcap.registry.store import parse_model_uri, version_tags

    if not model.startswith("models:/"):
        return None
    try:
        tags = version_tags(*parse_model_uri(model))
    except RadcapError:
        return None
    return tags.get("degraded_reason", "tagged degraded") if tags.get("degraded") == "true" else None


def guarded(page) -> None:
    """Run a page: a user's mistake (RadcapError) is its message in the page; a fault is a message too, with the
    traceback in the server's log (never in the browser). Every page opens with the drift alarm's banner when the
    served model is tagged degraded."""
    try:
        note = degraded_note(settings().app.model)
        if note:
            st.error(f"Drift alarm: the served model's drafts agree less with signed reports than they did. {note}")
        page()
    except RadcapError as exc:
        st.error(str(exc))
    except Exception:
        log.exception("the page failed")
        st.error("Something went wrong on the server (the traceback is in its log); please report it.")
