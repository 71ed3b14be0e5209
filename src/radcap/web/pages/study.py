"""The page for one study: its images as the model sees them, the report, where the model looked for each
word, the findings the report states and the closest training reports. Uploads stay in memory."""

from __future__ import annotations

import streamlit as st

from radcap.core.errors import RadcapError
from radcap.web.common import display, guarded, load_reader, log, settings


def model_card(reader, alias: str | None) -> None:
    info = reader.description
    st.sidebar.markdown(
        f"**Model** `{reader.captioner.name}` version **{reader.captioner.version}**"
        + (f" (alias `{alias}`)" if alias else "")
    )
    st.sidebar.markdown(f"{info['architecture']} · encoder `{info['encoder']}`")
    if reader.retriever:
        st.sidebar.markdown(f"**Retriever** `{reader.retriever.name}` version {reader.retriever.version}")


def chosen_files(cfg) -> list[tuple[str, bytes]]:
    """The study's files: the uploads, else the study picked from the configured folder."""
    limit = cfg.max_upload_mb * 2**20
    uploads = st.file_uploader(
        "Images of one study (PNG, JPEG or DICOM; a frontal and optionally a lateral view)",
        accept_multiple_files=True,
        key="uploads",
    )
    files = []
    for upload in uploads or []:
        if upload.size > limit:
            raise RadcapError(
                f"{upload.name}: file is {upload.size / 2**20:.0f} MiB, over the page's {cfg.max_upload_mb} MiB limit"
            )
        files.append((upload.name, upload.getvalue()))
    if files or cfg.studies is None:
        return files
    from radcap.serving.study import folder_studies

    studies = folder_studies(cfg.studies)
    if not studies:
        st.info(f"No study found in {cfg.studies}.")
        return []
    label = st.sidebar.selectbox(f"Or pick a study from {cfg.studies}", ["(none)", *studies], key="study")
    if label == "(none)":
        return []
    from radcap.imaging.decode import ImageRejected, read_bytes

    out = []
    for path in studies[label]:
        try:
            out.append((path.name, read_bytes(path)))
        except ImageRejected as exc:
            raise RadcapError(f"{path}: {exc}") from None
    return out


def study_page() -> None:
    from radcap.serving.study import attention_overlay, read_study

    cfg = settings().app
    st.title("One study")
    default_retriever = cfg.retriever == type(cfg).model_fields["retriever"].default
    reader, note = load_reader(cfg.model, cfg.retriever, default_retriever, cfg.neighbours)
    alias = cfg.model.split("@", 1)[1] if "@" in cfg.model else None
    model_card(reader, alias)
    defaults = reader.bundle.config.decoding
    st.sidebar.markdown("**Decoding** (defaults: the model's tuned values)")
    beam = st.sidebar.slider("Beam width (1: greedy)", 1, 10, int(defaults.beam_width), key="beam_width")
    penalty = st.sidebar.slider("Length penalty", 0.0, 3.0, float(defaults.length_penalty), 0.1, key="length_penalty")
    consensus = st.sidebar.slider(
        "Consensus samples (0: the beam's most probable report)",
        0,
        40,
        int(defaults.consensus_samples),
        key="consensus_samples",
        disabled=reader.bundle.cider is None,
    )
    if note:
        st.sidebar.caption(note)

    files = chosen_files(cfg)
    if not files:
        st.info("Upload a study's images, or pick a study in the sidebar.")
        return
    images = read_study(files, reader.bundle.config.max_views)
    if len(images) == 2 and st.checkbox("Swap frontal and lateral", key="swap"):
        from dataclasses import replace

        images = [replace(images[1], view="frontal"), replace(images[0], view="lateral")]
    for column, image in zip(st.columns(len(images)), images):
        column.image(display(image.image.pixels), caption=f"{image.view}: {image.name}")

    with st.spinner("Writing the report..."):
        report = reader.read(images, beam_width=beam, length_penalty=penalty, consensus_samples=consensus)
    log.info("report for %d image(s): %s", len(images), {k: round(v, 3) for k, v in report.seconds.items()})

    st.subheader("Report")
    st.markdown(f"> {report.report}" if report.report else "> *(the model wrote nothing)*")
    if report.in_domain is False:
        st.warning(f"Out of the model's domain ({report.ood_reason}): read this report with care.")
    st.caption(" · ".join(f"{k} {v * 1000:.0f} ms" for k, v in report.seconds.items()))

    st.subheader("Findings the report states")
    if report.findings.empty:
        st.write("None.")
    else:
        st.dataframe(report.findings, hide_index=True, key="findings")

    if report.attention is not None and report.words:
        st.subheader("Where the model looked")
        options = [f"{i + 1}. {word}" for i, word in enumerate(report.words)]
        word = st.pills("Word", options, default=options[0], key="word") or options[0]
        t = options.index(word)
        size = reader.encoder.input_size
        for column, image, heat in zip(st.columns(len(images)), images, report.attention[t]):
            column.image(
                attention_overlay(image.square(size), heat), caption=f"{image.view}, word {t + 1}: {report.words[t]}"
            )
    if report.neighbours is not None:
        st.subheader("Closest training reports")
        st.dataframe(report.neighbours.rename(columns={"score": "similarity"}), hide_index=True, key="neighbours")


guarded(study_page)
