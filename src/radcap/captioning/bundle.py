"""A trained captioner on disk: `config.json` + `vocab.json` + `weights.weights.h5`, no pickle.

Loading rebuilds the architecture from the typed config (`radcap.core.model_config.CaptionerConfig`) and reads
the weights (HDF5 holds arrays only, so loading runs no code from the file). The config also records which
encoder its features came from, so captioning new images extracts features with exactly that encoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from radcap.core.errors import RadcapError
from radcap.core.io import write_json
from radcap.core.model_config import (
    CAPTIONER_FORMATS,
    CONFIG_FILE,
    CONSENSUS_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    CaptionerConfig,
    SavedModelConfig,
)
from radcap.domain.guard import DomainGuard
from radcap.metrics.scores import CiderD
from radcap.registry.store import LoadedModel, resolve_bundle
from radcap.text.vocab import END, START, UNK, Vocabulary

if TYPE_CHECKING:  # Keras is imported where a model is built, not at import time
    from radcap.models.captioner import Captioner

SavedConfig = TypeVar("SavedConfig", bound=SavedModelConfig)

CONSENSUS_SEED = 0  # every study's sampled pseudo-references come from this seed: its report is reproducible


@dataclass(frozen=True)
class Explanation:
    report: str
    words: list[str]  # the generated tokens, in order (the report is them detokenized)
    attention: np.ndarray | None  # (words, views, grid cells) for an attention model, else None


@dataclass
class CaptionerBundle:
    model: Captioner
    vocab: Vocabulary
    config: CaptionerConfig
    domain: DomainGuard | None = None  # the out-of-domain guard (None: saved before radcap 0.2)
    cider: CiderD | None = None  # the training reports' CIDEr-D weights, for consensus decoding (None: before 0.3)

    @cached_property
    def decoder(self):
        """Built once: its compiled step functions are reused by every call."""
        from radcap.models.decoding import Decoder

        return Decoder(
            self.model,
            self.vocab.index[START],
            self.vocab.index[END],
            self.vocab.max_length,
            banned=(self.vocab.index[UNK],),
        )

    def generate(
        self,
        features: dict,
        beam_width: int = 1,
        length_penalty: float = 0.7,
        no_repeat_ngram: int = 0,
        consensus_samples: int = 0,
        batch_size: int = 64,
    ) -> list[np.ndarray]:
        """Token ids of each study's report, for a batch of study features ({'pooled', 'view_mask'[, 'grid']}
        numpy arrays): greedy with `beam_width` 1, beam search above; with `consensus_samples` N, of the beam's
        reports the one that agrees most with N reports sampled from the model (`consensus`)."""
        decoder, out = self.decoder, []
        if consensus_samples and beam_width > 1 and self.cider is None:
            raise RadcapError(
                "this captioner was saved without its training reports' document frequencies "
                f"({CONSENSUS_FILE}): decode it with consensus_samples=0, or train it again"
            )
        n = len(features["view_mask"])
        for i in range(0, n, batch_size):
            part = self.model_inputs(features, slice(i, i + batch_size))
            if beam_width <= 1:
                ids, _ = decoder.greedy(part, no_repeat_ngram)
            elif consensus_samples:
                ids = self.consensus(part, beam_width, length_penalty, no_repeat_ngram, consensus_samples)
            else:
                ids = decoder.beam(part, beam_width, length_penalty, no_repeat_ngram)
            out.extend(ids)
        return out

    def consensus(
        self, part: dict, beam_width: int, length_penalty: float, no_repeat_ngram: int, samples: int
    ) -> list[np.ndarray]:
        """Minimum Bayes risk decoding (Kumar & Byrne 2004; for captions, CIDEr as the utility): the beam's
        reports are the candidates, `samples` reports drawn from the model per study stand for the unknown
        reference, and the candidate with the highest mean CIDEr-D against them wins (ties: the beam's order).
        Beam search alone returns the most probable report, which for a model trained on one report per image
        is often one training report's specific wording; the consensus candidate says what the model's likely
        reports share."""
        if self.cider is None:
            raise RadcapError(
                "this captioner was saved without the training reports' statistics consensus decoding needs"
            )
        candidates, scores = self.decoder.beam_candidates(part, beam_width, length_penalty, no_repeat_ngram)
        studies = len(candidates)
        drawn = self.decoder.sample(part, [np.random.default_rng(CONSENSUS_SEED) for _ in range(studies)], samples)
        drawn = drawn.reshape(studies, samples, -1)
        chosen = []
        for b in range(studies):
            order = [k for k in np.argsort(-scores[b], kind="stable") if np.isfinite(scores[b, k])]
            utility = self.cider.consensus(
                [self.vocab.words(candidates[b, k]) for k in order], [self.vocab.words(ids) for ids in drawn[b]]
            )
            chosen.append(candidates[b, order[int(utility.argmax())]])
        return chosen

    def model_inputs(self, features: dict, rows: slice) -> dict:
        """The arrays the network reads for `rows`: grids as float32 (stored as float16), none without attention."""
        return {
            k: (v[rows].astype(np.float32) if k == "grid" else v[rows])
            for k, v in features.items()
            if k != "grid" or self.model.attention
        }

    def caption(
        self,
        features: dict,
        beam_width: int = 1,
        length_penalty: float = 0.7,
        no_repeat_ngram: int = 0,
        consensus_samples: int = 0,
        batch_size: int = 64,
    ) -> list[str]:
        """Captions for a batch of study features (see `generate`)."""
        return [
            self.vocab.decode(row)
            for row in self.generate(
                features, beam_width, length_penalty, no_repeat_ngram, consensus_samples, batch_size
            )
        ]

    def report(self, features: dict, **overrides) -> list[str]:
        """Captions decoded as the model was tuned to be (its config's `decoding`), with `overrides` (e.g. a
        caller's params) on top."""
        return self.caption(features, **self.decoding(**overrides))

    def decoding(self, **overrides) -> dict:
        return self.config.decoding.model_copy(
            update={k: v for k, v in overrides.items() if v is not None}
        ).model_dump()

    def explain(self, features: dict, **overrides) -> list[Explanation]:
        """Each study's report (as `report` writes it) with its words and, for an attention model, where the
        model looked for each word: weights (words, views, grid cells), read by teacher-forcing the report."""
        out = []
        for i, ids in enumerate(self.generate(features, **self.decoding(**overrides))):
            words = self.vocab.words(ids)
            weights = None
            if self.model.attention and words:
                steps = np.asarray(ids[: len(words)])[None, :]
                flat = self.decoder.attention_of(self.model_inputs(features, slice(i, i + 1)), steps)[0]
                weights = flat.reshape(len(words), self.config.max_views, -1)
            out.append(Explanation(self.vocab.decode(ids), words, weights))
        return out

    def save(self, folder: Path) -> None:
        save_bundle(self, folder)


def save_bundle(bundle, folder: Path) -> None:
    """A saved Keras model bundle (captioner or retriever): the typed config, the JSON vocabulary, the HDF5
    weights and, when there is one, the domain guard."""
    folder.mkdir(parents=True, exist_ok=True)
    bundle.config.save(folder / CONFIG_FILE)
    bundle.vocab.save(folder / VOCAB_FILE)
    bundle.model.save_weights(folder / WEIGHTS_FILE)
    if bundle.domain is not None:
        bundle.domain.save(folder)
    if getattr(bundle, "cider", None) is not None:
        write_json(bundle.cider.to_json(), folder / CONSENSUS_FILE, indent=None)


def build_model(config: CaptionerConfig, vocab_size: int):
    """The network a config describes, with its variables created (so weights can be loaded into them)."""
    from radcap.models.captioner import ARCHITECTURES

    kwargs = {
        "vocab_size": vocab_size,
        "max_views": config.max_views,
        "feature_dim": config.feature_dim,
        "embed_dim": config.embed_dim,
        "units": config.units,
        "dropout": config.dropout,
    }
    if config.architecture == "show-attend-tell":
        kwargs["attention_units"] = config.attention_units
    model = ARCHITECTURES[config.architecture](**kwargs)
    views, dim = config.max_views, config.feature_dim
    features = {
        "pooled": np.zeros((1, views, dim), np.float32),
        "view_mask": np.ones((1, views), np.float32),
        "grid": np.zeros((1, views, config.grid_cells, dim), np.float32),  # what model_inputs gives it
    }
    model.teacher_forced(features, np.ones((1, 2), np.int32))
    model.built = True  # a subclassed model: its variables exist now
    return model


def read_saved_model(
    folder: Path, config_class: type[SavedConfig], formats: tuple[str, ...], build: Callable[[SavedConfig, int], Any]
) -> tuple[Any, Vocabulary, SavedConfig]:
    """Rebuild a saved Keras model bundle: the typed config, the JSON vocabulary, then the HDF5 arrays read into
    `build(config, vocab_size)`. Returns (model, vocab, config)."""
    folder = Path(folder)
    config = config_class.load(folder / CONFIG_FILE, formats)
    vocab = Vocabulary.load(folder / VOCAB_FILE)
    model = build(config, len(vocab))
    try:
        model.load_weights(folder / WEIGHTS_FILE)
    except (OSError, ValueError) as exc:
        raise RadcapError(f"{folder}: cannot load the weights: {exc}") from exc
    return model, vocab, config


def load_bundle(folder: Path) -> CaptionerBundle:
    model, vocab, config = read_saved_model(folder, CaptionerConfig, CAPTIONER_FORMATS, build_model)
    return CaptionerBundle(model, vocab, config, DomainGuard.load(Path(folder)), read_consensus(Path(folder)))


def read_consensus(folder: Path) -> CiderD | None:
    path = folder / CONSENSUS_FILE
    if not path.exists():
        return None
    try:
        return CiderD.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise RadcapError(f"{path}: not a CIDEr-D document-frequency table: {exc}") from None


def load_captioner(uri: str) -> LoadedModel[CaptionerBundle]:
    """A captioner bundle from a local folder or a registry URI."""
    folder, name, version = resolve_bundle(uri, CAPTIONER_FORMATS, "captioner")
    return LoadedModel(load_bundle(folder), name, version)
