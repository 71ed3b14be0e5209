"""Contrastive retrieval: the trained dual encoder on disk, its training loop, the embedding index, recall.

A retriever bundle is `config.json` + `vocab.json` + `weights.weights.h5` (no pickle), like a captioner.
The index is one Parquet table (RETRIEVAL_INDEX) of unit vectors; search is exact: one matrix product,
which is fast to about 10^6 items of 256 floats (1 GiB) on one machine. Beyond that, use an approximate
index (FAISS, ScaNN, pgvector) over the same vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from radcap.captioning.bulk import judge_studies, reject_row, study_batches
from radcap.captioning.bundle import read_saved_model, save_bundle
from radcap.captioning.data import CaptionSet, mean_view, pack_views
from radcap.core.catalog import RunFolder
from radcap.core.errors import RadcapError
from radcap.core.io import read_table, write_table
from radcap.core.model_config import RETRIEVER_FORMATS, RetrieverConfig
from radcap.core.reporting import markdown_table
from radcap.core.settings import RetrievalSettings
from radcap.core.training import EarlyStopping, EpochRecord, FitResult, fit
from radcap.data_contracts import RETRIEVAL_INDEX, SEARCH_RESULTS
from radcap.domain.guard import DomainGuard
from radcap.imaging.features import stream_features
from radcap.metrics.scores import score_reports
from radcap.registry.store import LoadedModel, resolve_bundle
from radcap.text.vocab import Vocabulary, tokenize

if TYPE_CHECKING:  # Keras is imported where a model is built, not at import time
    from radcap.models.retrieval import DualEncoder

KS = (1, 5, 10)


def build_dual_encoder(config: RetrieverConfig, vocab_size: int):
    from radcap.models.retrieval import DualEncoder

    model = DualEncoder(
        vocab_size,
        feature_dim=config.feature_dim,
        dim=config.dim,
        embed_dim=config.embed_dim,
        text_units=config.text_units,
        hidden=config.hidden,
        dropout=config.dropout,
    )
    model.embed_images(np.zeros((1, 1, config.feature_dim), np.float32), np.ones((1, 1), np.float32))  # the variables
    model.embed_texts(np.ones((1, 2), np.int32))
    model.built = True
    return model


@dataclass
class RetrieverBundle:
    model: DualEncoder
    vocab: Vocabulary
    config: RetrieverConfig
    domain: DomainGuard | None = None  # the out-of-domain guard (None: saved before radcap 0.2)

    def image_embeddings(self, pooled: np.ndarray, view_mask: np.ndarray, batch: int = 512) -> np.ndarray:
        out = [
            np.asarray(self.model.embed_images(pooled[i : i + batch], view_mask[i : i + batch]))
            for i in range(0, len(pooled), batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.config.dim), np.float32)

    def text_embeddings(self, texts: list[str], batch: int = 512) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            tokens = np.asarray(self.vocab.encode_padded(texts[i : i + batch]), np.int32)
            longest = max(int((tokens != 0).sum(1).max()), 2)
            out.append(np.asarray(self.model.embed_texts(tokens[:, :longest])))
        return np.concatenate(out) if out else np.zeros((0, self.config.dim), np.float32)

    def save(self, folder: Path) -> None:
        save_bundle(self, folder)


def read_retriever(folder: Path) -> RetrieverBundle:
    model, vocab, config = read_saved_model(folder, RetrieverConfig, RETRIEVER_FORMATS, build_dual_encoder)
    return RetrieverBundle(model, vocab, config, DomainGuard.load(Path(folder)))


def relevance(query_texts: list[str], gallery_texts: list[str]) -> np.ndarray:
    """(Q,G) bool: a gallery report is a correct answer when its text is the query's (identical reports
    cannot be told apart, so ranking any of them first is right)."""
    codes = {t: i for i, t in enumerate(dict.fromkeys([*query_texts, *gallery_texts]))}
    q = np.array([codes[t] for t in query_texts])
    g = np.array([codes[t] for t in gallery_texts])
    return q[:, None] == g[None, :]


def recall_at_k(similarity: np.ndarray, relevant: np.ndarray, ks=KS) -> dict[str, float]:
    """Share of queries with a relevant item among the top k (ties broken against the query: pessimistic)."""
    best_relevant = np.where(relevant, similarity, -np.inf).max(1)
    better = (np.where(relevant, -np.inf, similarity) >= best_relevant[:, None]).sum(1)  # irrelevant at least as high
    return {f"R@{k}": float(np.mean(better < k)) for k in ks}


def _directions(i2t_similarity: np.ndarray, t2i_similarity: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    scores = {
        **{f"image_to_report_{k}": v for k, v in recall_at_k(i2t_similarity, relevant).items()},
        **{f"report_to_image_{k}": v for k, v in recall_at_k(t2i_similarity, relevant.T).items()},
    }
    return {**scores, "mean_recall": float(np.mean(list(scores.values())))}


def both_directions(
    image_emb: np.ndarray, text_emb: np.ndarray, texts: list[str], relevant: np.ndarray | None = None
) -> dict[str, float]:
    """Image->report and report->image recall on one set of pairs (gallery = the set itself). `relevant`
    defaults to "same report text"; pass e.g. "same finding label" to score retrieval by finding."""
    similarity = image_emb @ text_emb.T
    return _directions(similarity, similarity.T, relevance(texts, texts) if relevant is None else relevant)


def raw_feature_baseline(
    train: CaptionSet, evaluated: CaptionSet, relevant: np.ndarray | None = None
) -> dict[str, float]:
    """Nearest neighbours on raw features, no learning: an image is linked to a report through the training
    pairs (image -> nearest training image by pooled cosine -> its report -> TF-IDF cosine to each gallery
    report; report -> nearest training report by TF-IDF -> its image -> pooled cosine to each gallery image)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None).fit(train.texts)
    train_txt, eval_txt = tfidf.transform(train.texts), tfidf.transform(evaluated.texts)
    train_img, eval_img = mean_view(train.pooled, train.view_mask), mean_view(evaluated.pooled, evaluated.view_mask)
    nearest_train_image = (eval_img @ train_img.T).argmax(1)
    i2t = (train_txt[nearest_train_image] @ eval_txt.T).toarray()
    nearest_train_report = (eval_txt @ train_txt.T).toarray().argmax(1)
    t2i = train_img[nearest_train_report] @ eval_img.T
    return _directions(i2t, t2i, relevance(evaluated.texts, evaluated.texts) if relevant is None else relevant)


def random_baseline(evaluated: CaptionSet, relevant: np.ndarray | None = None, seed: int = 0) -> dict[str, float]:
    similarity = np.random.default_rng(seed).random((len(evaluated), len(evaluated)))
    return _directions(
        similarity, similarity.T, relevance(evaluated.texts, evaluated.texts) if relevant is None else relevant
    )


@dataclass
class RetrieverTraining:
    bundle: RetrieverBundle
    fit: FitResult


def train_retriever(
    train: CaptionSet,
    val: CaptionSet,
    vocab: Vocabulary,
    cfg: RetrievalSettings,
    config_extra: dict | None = None,
    on_epoch: Callable[[EpochRecord], None] = lambda e: None,
) -> RetrieverTraining:
    """InfoNCE epochs over whole batches, validation recall after each; early stopping on val mean recall."""
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from radcap.models.retrieval import make_train_step

    keras.utils.set_random_seed(cfg.seed)
    config = RetrieverConfig(
        **{k: getattr(cfg, k) for k in ("dim", "embed_dim", "text_units", "hidden", "dropout", "max_views")},
        **(config_extra or {}),
    )
    model = build_dual_encoder(config, len(vocab))
    mean, std = train.feature_statistics(attention=False)
    model.feature_mean.assign(mean)
    model.feature_std.assign(std)
    bundle = RetrieverBundle(model, vocab, config)
    step = make_train_step(model, keras.optimizers.Adam(cfg.learning_rate))
    tokens = np.asarray(vocab.encode_padded(train.texts), np.int32)
    tokens = tokens[:, : max(int((tokens != 0).sum(1).max()), 2)]
    groups = np.unique(np.asarray(train.texts), return_inverse=True)[1].astype(np.int32)
    batch, rng = min(cfg.batch_size, len(train)), np.random.default_rng(cfg.seed)

    def run_epoch(epoch: int) -> dict[str, float]:
        order, losses = rng.permutation(len(train)), []
        # Whole batches only: one compiled shape, and every batch has the same number of negatives.
        for i in tqdm(range(0, len(order) - batch + 1, batch), desc=f"epoch {epoch}", unit="batch", leave=False):
            idx = np.sort(order[i : i + batch])
            losses.append(
                float(
                    step(
                        tf.constant(train.pooled[idx]),
                        tf.constant(train.view_mask[idx]),
                        tf.constant(tokens[idx]),
                        tf.constant(groups[idx]),
                    )
                )
            )
        scores = both_directions(
            bundle.image_embeddings(val.pooled, val.view_mask), bundle.text_embeddings(val.texts), val.texts
        )
        return {
            "train_loss": float(np.mean(losses)),
            "temperature_scale": float(model.scale()),
            **{f"val_{k}": v for k, v in scores.items()},
        }

    stopping = EarlyStopping("val_mean_recall", "max", cfg.patience, 1, 0.0)
    return RetrieverTraining(bundle, fit(model, cfg.epochs, run_epoch, stopping, on_epoch))


class RetrievalIndex:
    """Known items (images, reports) as unit vectors, searched exactly."""

    def __init__(self, table: pd.DataFrame):
        self.table = table.reset_index(drop=True)
        self._matrix = {
            kind: (
                np.stack(part["embedding"].to_numpy()).astype(np.float32) if len(part) else None,
                part.index.to_numpy(),
            )
            for kind, part in self.table.groupby("kind")
        }

    @classmethod
    def build(cls, bundle: RetrieverBundle, data: CaptionSet, split: str, sources: dict[str, str]) -> RetrievalIndex:
        images = bundle.image_embeddings(data.pooled, data.view_mask)
        texts = bundle.text_embeddings(data.texts)
        rows = [
            {
                "item_id": rid,
                "kind": kind,
                "text": text,
                "source": sources.get(rid, ""),
                "split": split,
                "embedding": vector.astype(np.float32),
            }
            for kind, vectors in (("image", images), ("report", texts))
            for rid, text, vector in zip(data.report_ids, data.texts, vectors)
        ]
        return cls(pd.DataFrame(rows, columns=RETRIEVAL_INDEX.column_names))

    def save(self, path: Path) -> None:
        write_table(self.table, path, RETRIEVAL_INDEX)

    @classmethod
    def load(cls, path: Path) -> RetrievalIndex:
        return cls(read_table(path, RETRIEVAL_INDEX))

    def search(self, queries: np.ndarray, kind: str, top_k: int) -> list[pd.DataFrame]:
        """For each query vector, the `top_k` items of `kind` with their cosine scores, best first."""
        matrix, rows = self._matrix.get(kind, (None, None))
        if matrix is None:
            raise RadcapError(f"the retrieval index holds no {kind}s")
        k = min(top_k, len(rows))
        scores = queries.astype(np.float32) @ matrix.T
        # Top k without sorting the whole gallery: partition, then order the k (ties by position).
        part = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < len(rows)
            else np.tile(np.arange(len(rows)), (len(scores), 1))
        )
        order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
        best = np.take_along_axis(part, order, axis=1)
        out = []
        for q in range(len(queries)):
            hits = self.table.iloc[rows[best[q]]][["item_id", "kind", "text", "source"]].reset_index(drop=True)
            out.append(
                hits.assign(rank=np.arange(1, k + 1, dtype=np.int32), score=scores[q, best[q]].astype(np.float32))
            )
        return out


def retrieved_captions(bundle: RetrieverBundle, index: RetrievalIndex, evaluated: CaptionSet) -> list[str]:
    """Each evaluated study's top-1 known report (the index holds training reports only)."""
    hits = index.search(bundle.image_embeddings(evaluated.pooled, evaluated.view_mask), "report", 1)
    return [h["text"].iloc[0] for h in hits]


def evaluate_retriever(
    bundle: RetrieverBundle, index: RetrievalIndex, train: CaptionSet, evaluated: CaptionSet, meteor: bool = True
) -> dict:
    """Recall@1/5/10 both ways (gallery: the evaluated split) against random ranking and raw-feature neighbours,
    and the retrieved report scored as a caption with the generators' metrics."""
    model = both_directions(
        bundle.image_embeddings(evaluated.pooled, evaluated.view_mask),
        bundle.text_embeddings(evaluated.texts),
        evaluated.texts,
    )
    recall = {
        "contrastive retriever": model,
        "raw-feature neighbours": raw_feature_baseline(train, evaluated),
        "random ranking": random_baseline(evaluated),
    }
    references = dict(zip(evaluated.report_ids, evaluated.texts))
    hypotheses = dict(zip(evaluated.report_ids, retrieved_captions(bundle, index, evaluated)))
    as_caption = {
        k: v for k, v in score_reports(references, hypotheses, meteor=meteor).summary().items() if k != "per_finding"
    }
    return {"recall": recall, "retrieved_as_caption": as_caption, "queries": len(evaluated)}


def retrieval_report(scores: dict, meta: dict) -> str:
    table = pd.DataFrame([{"system": name, **values} for name, values in scores["recall"].items()])
    caption = pd.DataFrame([{"system": "retrieved report (top-1)", **scores["retrieved_as_caption"]}])
    return (
        f"# radcap retrieval\n\n`{meta['data_dir']}` split `{meta['split']}` ({scores['queries']} image-report "
        f"pairs; gallery = that split; identical reports count as correct).\n\n## Recall\n\n{markdown_table(table)}\n"
        f"## Retrieved report as a caption (index: {meta['index_split']} reports)\n\n{markdown_table(caption)}"
    )


def result_rows(
    queries: list[str],
    hits: list[pd.DataFrame],
    model: str,
    study_ids: list[str | None],
    verdicts: list[tuple] | None = None,
    encoder_version: str | None = None,
) -> pd.DataFrame:
    verdicts = verdicts or [(None, None, None)] * len(queries)
    frames = [
        h.assign(
            query=q, query_study_id=s, model=model, encoder_version=encoder_version, ood_score=v[0], in_domain=v[1]
        )
        for q, s, h, v in zip(queries, study_ids, hits, verdicts)
    ]
    if not frames:
        return SEARCH_RESULTS.empty()
    return pd.concat(frames, ignore_index=True)[SEARCH_RESULTS.column_names]


def retrieve_studies(
    images: list,
    bundle: RetrieverBundle,
    index: RetrievalIndex,
    forward,
    batch_size: int,
    input_size: int,
    top_k: int,
    model_name: str,
    encoder_version: str | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Each study of `images` (radcap.pacs.exports.InputImage, grouped as captioning does) -> its top-k known
    reports, through the shared image -> features path; files that cannot be encoded -> reject rows."""
    rejects, frames = [], []
    batches = [[image for study in batch for image in study] for batch in study_batches(images, batch_size)]
    for batch in stream_features(
        images, lambda image: image.path, forward, batch_size, input_size, grid=False, batches=batches
    ):
        rejects += [
            reject_row(batch.items[k].source_path, batch.shas[k], reason) for k, reason in sorted(batch.reasons.items())
        ]
        studies: dict[str, list[int]] = {}
        for k in sorted(batch.rows):
            studies.setdefault(batch.items[k].study_id, []).append(k)
        if not studies:
            continue
        rows = [[batch.rows[k] for k in keys] for keys in studies.values()]
        packed = pack_views(rows, batch.features.pooled, None, bundle.config.max_views)
        hits = index.search(bundle.image_embeddings(packed["pooled"], packed["view_mask"]), "report", top_k)
        queries = [";".join(batch.items[k].source_path for k in keys) for keys in studies.values()]
        modalities = [
            next((batch.items[k].modality for k in keys if batch.items[k].modality), None) for keys in studies.values()
        ]
        colours = [max(batch.chroma[k] for k in keys) for keys in studies.values()]
        verdicts = judge_studies(
            bundle.domain,
            batch.features.pooled,
            batch.encoded_statistics(),
            rows,
            modalities,
            colours,
            batch.features.early,
        )
        frames.append(result_rows(queries, hits, model_name, list(studies), verdicts, encoder_version))
    return (pd.concat(frames, ignore_index=True) if frames else SEARCH_RESULTS.empty()), rejects


@dataclass
class LoadedRetriever(LoadedModel[RetrieverBundle]):
    """A loaded retriever and the index of the known reports and images it searches."""

    index: RetrievalIndex = field(kw_only=True)


def load_retriever(uri: str) -> LoadedRetriever:
    """A retriever bundle and its index, from a run folder (retriever/ + index.parquet) or a registry URI."""
    folder, name, version = resolve_bundle(uri, RETRIEVER_FORMATS, "retriever")
    indexes = sorted(folder.parent.rglob(RunFolder(folder.parent).index.name))
    if not indexes:
        raise RadcapError(f"{uri}: the retriever has no index.parquet")
    return LoadedRetriever(read_retriever(folder), name, version, index=RetrievalIndex.load(indexes[0]))
