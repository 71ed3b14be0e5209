"""Report tokenization and the vocabulary, saved as JSON (never pickle).

Tokenization uses nltk parts that need no downloaded data: Punkt's untrained sentence splitter, then the
Penn Treebank word tokenizer on each sentence, so 'abnormality.' -> 'abnormality', '.' while '2.5' and
't-spine' stay whole. Text is expected already normalized (lowercase etc., see `radcap.text.normalize`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from radcap.core.errors import RadcapError
from radcap.core.io import write_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # PAD is id 0, so masks are `ids != 0`
NO_SPACE_BEFORE = {".", ",", ";", ":", ")", "?", "!", "%"}


@lru_cache(maxsize=1)
def _tokenizers():
    from nltk.tokenize import TreebankWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(), TreebankWordTokenizer()


def tokenize(text: str) -> list[str]:
    sentences, words = _tokenizers()
    return [token for sentence in sentences.tokenize(text or "") for token in words.tokenize(sentence)]


def detokenize(tokens: Iterable[str]) -> str:
    out = ""
    for token in tokens:
        if out and token not in NO_SPACE_BEFORE and not out.endswith("("):
            out += " "
        out += token
    return out


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]  # id -> token; the first four are SPECIALS
    max_length: int  # tokens per caption including <start> and <end>
    min_count: int

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 2, max_length: int = 60) -> Vocabulary:
        """Tokens seen at least `min_count` times, most frequent first (ties alphabetical, so it is stable)."""
        counts = Counter(token for text in texts for token in tokenize(text))
        kept = sorted(
            (t for t, n in counts.items() if n >= min_count and t not in SPECIALS), key=lambda t: (-counts[t], t)
        )
        return cls(SPECIALS + tuple(kept), max_length, min_count)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return _index(self.tokens)

    def encode(self, text: str) -> list[int]:
        """<start> tokens <end>, truncated to max_length (keeping <end>); unknown tokens -> <unk>."""
        index = self.index
        body = [index.get(token, index[UNK]) for token in tokenize(text)][: self.max_length - 2]
        return [index[START], *body, index[END]]

    def encode_padded(self, texts: Iterable[str]) -> list[list[int]]:
        return [ids + [0] * (self.max_length - len(ids)) for ids in map(self.encode, texts)]

    def decode(self, ids: Iterable[int]) -> str:
        """Stops at <end>; drops <start> and <pad>."""
        return detokenize(self.words(ids))

    def words(self, ids: Iterable[int]) -> list[str]:
        """The tokens before <end>, without <start> and <pad>."""
        words = []
        for i in ids:
            token = self.tokens[int(i)]
            if token == END:
                break
            if token not in (START, PAD):
                words.append(token)
        return words

    def to_json(self) -> dict:
        return {
            "format": "radcap-vocabulary/1",
            "tokens": list(self.tokens),
            "max_length": self.max_length,
            "min_count": self.min_count,
            "specials": list(SPECIALS),
        }

    def save(self, path: Path) -> None:
        write_json(self.to_json(), path)

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            tokens = tuple(data["tokens"])
            if tokens[: len(SPECIALS)] != SPECIALS or len(set(tokens)) != len(tokens):
                raise ValueError("special tokens missing or duplicate tokens")
            return cls(tokens, int(data["max_length"]), int(data["min_count"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RadcapError(f"{path}: not a radcap vocabulary file: {exc}") from exc


@lru_cache(maxsize=8)
def _index(tokens: tuple[str, ...]) -> dict[str, int]:
    return {token: i for i, token in enumerate(tokens)}
