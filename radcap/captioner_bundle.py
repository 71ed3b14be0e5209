"""A trained captioner on disk: `config.json` + `vocab.json` + `weights.weights.h5`, no pickle.

Loading rebuilds the architecture from the JSON config and reads the weights (HDF5 holds arrays only, so
loading runs no code from the file). The bundle also records which encoder version its features came
from, so captioning new images extracts features with the same encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from radcap.errors import RadcapError
from radcap.io import write_json
from radcap.vocab import END, START, UNK, Vocabulary

FORMAT = "radcap-captioner/1"


@dataclass
class CaptionerBundle:
    model: object  # models.captioner.Captioner
    vocab: Vocabulary
    config: dict  # architecture, hyper-parameters, encoder_version, data_version, ...

    @cached_property
    def decoder(self):
        """Built once: its compiled step functions are reused by every call."""
        from models.decoding import Decoder

        return Decoder(self.model, self.vocab.index[START], self.vocab.index[END], self.vocab.max_length,
                       banned=(self.vocab.index[UNK],))

    def caption(self, features: dict, beam_width: int = 1, length_penalty: float = 0.7, no_repeat_ngram: int = 0,
                batch_size: int = 64) -> list[str]:
        """Captions for a batch of study features ({'pooled', 'view_mask'[, 'grid']} numpy arrays)."""
        decoder, out = self.decoder, []
        n = len(features["view_mask"])
        for i in range(0, n, batch_size):
            part = {k: v[i: i + batch_size] for k, v in features.items() if k != "grid" or self.model.attention}
            if beam_width <= 1:
                ids, _ = decoder.greedy(part, no_repeat_ngram)
            else:
                ids = decoder.beam(part, beam_width, length_penalty, no_repeat_ngram)
            out.extend(self.vocab.decode(row) for row in ids)
        return out

    def report(self, features: dict, **overrides) -> list[str]:
        """Captions decoded as the model was tuned to be: the config's `decoding` (beam width, length penalty
        chosen on val, no-repeat n-grams), with `overrides` (e.g. a caller's params) on top."""
        cfg = {**self.config.get("decoding", {}), **overrides}
        return self.caption(features, beam_width=int(cfg.get("beam_width", 1)),
                            length_penalty=float(cfg.get("length_penalty", 0.7)),
                            no_repeat_ngram=int(cfg.get("no_repeat_ngram", 0)))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json({"format": FORMAT, **self.config}, folder / "config.json")
        self.vocab.save(folder / "vocab.json")
        self.model.save_weights(folder / "weights.weights.h5")


def build_model(config: dict, vocab_size: int):
    from models.captioner import ARCHITECTURES

    cls = ARCHITECTURES[config["architecture"]]
    kwargs = dict(vocab_size=vocab_size, max_views=config["max_views"], embed_dim=config["embed_dim"],
                  units=config["units"], dropout=config["dropout"])
    if config["architecture"] == "show-attend-tell":
        kwargs["attention_units"] = config["attention_units"]
    model = cls(**kwargs)
    # Build the variables with one dummy step, so that weights can be loaded into them.
    views = config["max_views"]
    features = {"pooled": np.zeros((1, views, 1024), np.float32), "view_mask": np.ones((1, views), np.float32),
                "grid": np.zeros((1, views, 49, 1024), np.float16)}
    model.teacher_forced(features, np.ones((1, 2), np.int32))
    model.built = True  # a subclassed model: its variables exist now
    return model


def read_saved_model(folder: Path, fmt: str, build) -> tuple[object, Vocabulary, dict]:
    """Rebuild a saved Keras model bundle (config.json + vocab.json + weights.weights.h5) of format `fmt`:
    `build(config, vocab_size)` makes the architecture, then the HDF5 arrays are read into it."""
    folder, what = Path(folder), fmt.split("/")[0]
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RadcapError(f"{folder}: not a {what} (config.json: {exc})") from exc
    if config.get("format") != fmt:
        raise RadcapError(f"{folder}: unsupported {what} format {config.get('format')!r} (expected {fmt})")
    vocab = Vocabulary.load(folder / "vocab.json")
    model = build(config, len(vocab))
    try:
        model.load_weights(folder / "weights.weights.h5")
    except (OSError, ValueError) as exc:
        raise RadcapError(f"{folder}: cannot load the weights: {exc}") from exc
    return model, vocab, config


def load_bundle(folder: Path) -> CaptionerBundle:
    return CaptionerBundle(*read_saved_model(folder, FORMAT, build_model))
