"""One study at a time, for a person or another system: what `radcap app` shows and the serving benchmark times.

Uploaded bytes -> the images as the model sees them -> the report, where the model looked for each word
(attention models), the findings the report states (the rule labeler), the closest training reports (the
registered retriever, when there is one) and the out-of-domain verdict, with the time each part took.

Privacy: an uploaded DICOM is read for its pixels with the pixel tags only (`imaging.decode`) and for its view
and modality (`pacs.dicom_identity`, well-formed values only): no patient attribute is ever parsed, so none can
be shown or logged. Uploads are decoded in memory; nothing is written to disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from radcap.captioning.bulk import judge_studies
from radcap.captioning.bundle import CaptionerBundle
from radcap.captioning.data import VIEW_ORDER, pack_views
from radcap.core.errors import RadcapError
from radcap.data_contracts.features import GRID_SIDE
from radcap.imaging.decode import ImageRejected, LoadedImage, check_bytes, decode, to_square
from radcap.imaging.features import encode_batch
from radcap.pacs.exports import Identifiers, dicom_identity, scan
from radcap.registry.store import LoadedModel
from radcap.retrieval.retriever import LoadedRetriever
from radcap.text.labeler import NEGATIVE, POSITIVE, UNCERTAIN, label_text

STATUS = {POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain"}


@dataclass(frozen=True)
class StudyImage:
    name: str  # the file name as given (never a header value)
    view: str  # frontal, lateral or unknown: the DICOM ViewPosition, else the caller's choice
    image: LoadedImage  # [0, 1] pixels as decoded: VOI window applied, MONOCHROME1 inverted
    modality: str | None = None  # DICOM Modality code, when well-formed

    def square(self, size: int) -> np.ndarray:
        """The letterboxed uint8 square the encoder reads."""
        return to_square(self.image, size)


def read_upload(name: str, data: bytes) -> StudyImage:
    """One uploaded file's bytes, or RadcapError naming the file and the reason."""
    try:
        image = decode(check_bytes(data))
    except ImageRejected as exc:
        raise RadcapError(f"{name}: {exc}") from None
    view, modality = "unknown", None
    if image.kind == "dicom":
        try:
            _, _, view, modality = dicom_identity(data)
        except Exception:
            pass
    return StudyImage(name, view, image, modality)


def read_study(files: list[tuple[str, bytes]], max_views: int = 2) -> list[StudyImage]:
    """The images of one study (one per view), frontal first. Views the headers do not give are taken in
    upload order: the first free of frontal, then lateral."""
    if not files:
        raise RadcapError("no image: give one frontal image, or a frontal and a lateral one")
    if len(files) > max_views:
        raise RadcapError(
            f"{len(files)} images: a study here has at most {max_views} (one per view: "
            "frontal, lateral); caption more with `radcap caption`"
        )
    return assign_views([read_upload(name, data) for name, data in files])


def assign_views(images: list[StudyImage]) -> list[StudyImage]:
    taken = {image.view for image in images}
    free = [v for v in ("frontal", "lateral") if v not in taken]
    out = [replace(image, view=free.pop(0)) if image.view == "unknown" and free else image for image in images]
    return sorted(out, key=lambda image: VIEW_ORDER.get(image.view, 2))


@dataclass
class StudyReport:
    report: str
    words: list[str]
    attention: np.ndarray | None  # (words, views, GRID_SIDE, GRID_SIDE) for an attention model
    views: list[StudyImage]  # in the order the model read them
    findings: pd.DataFrame  # finding, status (positive / negative / uncertain): what the report states
    neighbours: pd.DataFrame | None  # rank, score, text, item_id of the closest training reports
    ood_score: float | None
    in_domain: bool | None
    ood_reason: str | None
    seconds: dict[str, float] = field(default_factory=dict)  # read_images, encoder, decoder, retrieval


def findings_of(report: str) -> pd.DataFrame:
    """The observations the rule labeler reads in a report, mentioned ones only ('No Finding' included: positive
    when no pathology is positive or uncertain). An empty report states nothing."""
    if not report.strip():
        return pd.DataFrame(columns=["finding", "status"])
    rows = [(name, STATUS[value]) for name, value in label_text(report).items() if value is not None]
    return pd.DataFrame(rows, columns=["finding", "status"])


class StudyReader:
    """A loaded captioner (and optionally a retriever) answering for one study at a time, warm between calls."""

    def __init__(
        self, captioner: LoadedModel[CaptionerBundle], retriever: LoadedRetriever | None = None, neighbours: int = 5
    ):
        from radcap.imaging.encoders import encoder_for

        self.captioner, self.retriever, self.top_k = captioner, retriever, neighbours
        self.bundle = captioner.bundle
        self.encoder = encoder_for(self.bundle.config)
        self._forward = self.encoder.forward_fn()
        self._retriever_forward = None
        if retriever is not None and retriever.bundle.config.encoder_version != self.encoder.version:
            encoder = encoder_for(retriever.bundle.config)  # the retriever learned on another encoder's features
            self._retriever_forward = (encoder.input_size, encoder.forward_fn())

    def warm_up(self) -> None:
        """Trace the encoder, decoder and retriever once on a blank study, so the first reader does not wait for
        it (~3 s on CPU)."""
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(buffer, format="PNG")
        self.generate([(f"warm-up-{k}.png", buffer.getvalue()) for k in range(self.bundle.config.max_views)])

    @property
    def description(self) -> dict:
        config = self.bundle.config
        return {
            "model": self.captioner.uri,
            "architecture": config.architecture,
            "encoder": config.encoder_version,
            "max_views": config.max_views,
            **config.decoding.model_dump(),
            "retriever": self.retriever.uri if self.retriever else None,
        }

    def generate(self, files: list[tuple[str, bytes]], **decoding) -> StudyReport:
        """Bytes in, report out (what a request costs: reading the images included)."""
        start = time.perf_counter()
        images = read_study(files, self.bundle.config.max_views)
        report = self.read(images, **decoding)
        report.seconds = {"read_images": time.perf_counter() - start - sum(report.seconds.values()), **report.seconds}
        return report

    def read(
        self,
        images: list[StudyImage],
        beam_width: int | None = None,
        length_penalty: float | None = None,
        no_repeat_ngram: int | None = None,
        consensus_samples: int | None = None,
    ) -> StudyReport:
        config, seconds = self.bundle.config, {}
        if not images or len(images) > config.max_views:
            raise RadcapError(f"{len(images)} images: this model reads 1 to {config.max_views} per study")
        clock = time.perf_counter()
        squares = [image.square(self.encoder.input_size) for image in images]
        # Padded to max_views: one compiled shape for every study.
        encoded = encode_batch(self._forward, squares, config.max_views, grid=bool(self.bundle.model.attention))
        if encoded.failed:
            row, reason = min(encoded.failed.items())
            raise RadcapError(f"{images[row].name}: {reason}")
        rows = [list(range(len(images)))]
        features = pack_views(
            rows, encoded.pooled, encoded.grid if self.bundle.model.attention else None, config.max_views
        )
        seconds["encoder"] = time.perf_counter() - clock

        clock = time.perf_counter()
        explained = self.bundle.explain(
            features,
            beam_width=beam_width,
            length_penalty=length_penalty,
            no_repeat_ngram=no_repeat_ngram,
            consensus_samples=consensus_samples,
        )[0]
        attention = None
        if explained.attention is not None:
            attention = explained.attention[:, : len(images)].reshape(
                len(explained.words), len(images), GRID_SIDE, GRID_SIDE
            )
        score, in_domain, reason = judge_studies(
            self.bundle.domain,
            encoded.pooled,
            np.stack([i.image.statistics for i in images]),
            rows,
            [next((i.modality for i in images if i.modality), None)],
            [max(i.image.chroma for i in images)],
            encoded.early,
        )[0]
        seconds["decoder"] = time.perf_counter() - clock

        neighbours = None
        if self.retriever is not None:
            clock = time.perf_counter()
            neighbours = self._neighbours(encoded.pooled, squares, len(images))
            seconds["retrieval"] = time.perf_counter() - clock
        return StudyReport(
            explained.report,
            explained.words,
            attention,
            images,
            findings_of(explained.report),
            neighbours,
            score,
            in_domain,
            reason,
            seconds,
        )

    def _neighbours(self, pooled: np.ndarray, squares: list[np.ndarray], views: int) -> pd.DataFrame:
        assert self.retriever is not None  # called only with a retriever
        bundle = self.retriever.bundle
        if self._retriever_forward is not None:
            size, forward = self._retriever_forward
            squares = [to_square(LoadedImage(s.astype(np.float32) / 255.0, "png"), size) for s in squares]
            pooled = encode_batch(forward, squares, self.bundle.config.max_views, grid=False).pooled
        query = bundle.image_embeddings(pooled[None, :views].astype(np.float32), np.ones((1, views), np.float32))
        hits = self.retriever.index.search(query, "report", self.top_k)[0]
        return hits[["rank", "score", "text", "item_id"]]


def folder_studies(root: Path) -> dict[str, list[Path]]:
    """The studies of a folder grouped as bulk captioning groups them (`pacs.scan`: DICOM files by study,
    each PNG/JPEG alone), each labelled by its files' paths (never by a header value)."""
    if not Path(root).is_dir():
        raise RadcapError(f"{root}: no such folder of studies")
    groups: dict[str, list] = {}
    for image in scan(Path(root), Identifiers("uid")).images:
        groups.setdefault(image.study_id, []).append(image)
    studies = {}
    for images in groups.values():
        images = sorted(images, key=lambda i: (VIEW_ORDER.get(i.view, 2), i.source_path))
        studies[" + ".join(i.source_path for i in images)] = [i.path for i in images]
    return dict(sorted(studies.items()))


def attention_overlay(square: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An (S,S) uint8 image with a (side,side) attention map drawn over it (inferno colours), as RGB uint8."""
    from matplotlib import colormaps
    from PIL import Image

    side = square.shape[0]
    span = float(heat.max() - heat.min())
    scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    smooth = np.asarray(
        Image.fromarray(scaled.astype(np.float32), mode="F").resize((side, side), Image.Resampling.BILINEAR)
    )
    colour = colormaps["inferno"](np.clip(smooth, 0, 1))[..., :3]
    gray = np.repeat(square[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    return (np.clip((1 - alpha) * gray + alpha * colour, 0, 1) * 255 + 0.5).astype(np.uint8)
