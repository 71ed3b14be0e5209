"""Tokenization and the JSON vocabulary."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from radcap.core.errors import RadcapError
from radcap.text.vocab import SPECIALS, Vocabulary, detokenize, tokenize


def test_tokenize_splits_sentence_punctuation_but_keeps_numbers_and_hyphens():
    text = "no acute cardiopulmonary abnormality. xxxx 2.5 cm nodule (left), t-spine changes."
    assert tokenize(text) == [
        "no",
        "acute",
        "cardiopulmonary",
        "abnormality",
        ".",
        "xxxx",
        "2.5",
        "cm",
        "nodule",
        "(",
        "left",
        ")",
        ",",
        "t-spine",
        "changes",
        ".",
    ]
    assert (
        detokenize(tokenize(text))
        == "no acute cardiopulmonary abnormality. xxxx 2.5 cm nodule (left), t-spine changes."
    )


def test_vocabulary_counts_specials_and_round_trip(tmp_path):
    texts = ["no effusion.", "no pneumothorax.", "small effusion.", "rare word."]
    vocab = Vocabulary.build(texts, min_count=2, max_length=6)
    assert vocab.tokens[:4] == SPECIALS and vocab.tokens[4:] == (".", "effusion", "no")
    ids = vocab.encode("no large effusion.")
    assert vocab.tokens[ids[0]] == "<start>" and vocab.tokens[ids[-1]] == "<end>"
    assert vocab.decode(ids) == "no <unk> effusion."
    assert len(vocab.encode("no no no no no no no no.")) == 6  # truncated, <end> kept
    assert all(len(row) == 6 for row in vocab.encode_padded(texts))
    vocab.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text())["tokens"][:4] == list(SPECIALS)
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab


def test_a_broken_vocabulary_file_is_a_user_error(tmp_path):
    (tmp_path / "v.json").write_text('{"tokens": ["a", "b"], "max_length": 5, "min_count": 1}')
    with pytest.raises(RadcapError, match="not a radcap vocabulary"):
        Vocabulary.load(tmp_path / "v.json")
    with pytest.raises(RadcapError, match=r"v2\.json"):
        Vocabulary.load(tmp_path / "v2.json")


@pytest.mark.realdata
def test_vocabulary_on_all_real_iu_reports(shared_data):
    import pandas as pd

    from radcap.core.settings import TextRules
    from radcap.text.normalize import normalize

    reports = pd.read_csv(shared_data / "iu_xray" / "indiana_reports.csv", dtype=str, keep_default_na=False)
    rules = TextRules()
    texts = [t for t in (normalize(x, rules) for x in reports["impression"]) if t]
    vocab = Vocabulary.build(texts, min_count=3, max_length=400)
    assert 500 < len(vocab) < 2000  # IU impressions have a small vocabulary
    counts = Counter(token for t in texts for token in tokenize(t))
    unk = vocab.index["<unk>"]
    unknown = sum(ids.count(unk) for ids in map(vocab.encode, texts))
    assert unknown == sum(n for n in counts.values() if n < 3)  # exactly the rare tokens, nothing else
    assert unknown / sum(counts.values()) < 0.03
