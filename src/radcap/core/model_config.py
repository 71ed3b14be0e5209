"""The saved models' configurations: typed and versioned, like Hugging Face configs (`config.json` beside the
weights, `save_pretrained` / `from_pretrained`).

A captioner bundle is `config.json` + `vocab.json` + `weights.weights.h5`; a retriever bundle the same. The
config says how to rebuild the network (so loading runs no code from the file) and where its features came
from (encoder version and the spec that reloads exactly it). Format history:
* `radcap-captioner/1`, `radcap-retriever/1` (radcap 0.1): no feature dimensions (they were 1024 and 7x7);
  read with those defaults.
* `radcap-captioner/2`, `radcap-retriever/2` (radcap 0.2): `feature_dim` and `grid_cells` recorded.
* `radcap-captioner/3` (radcap 0.3): `decoding.consensus_samples`; the bundle may carry `consensus.json`
  (the training reports' CIDEr-D document frequencies, which consensus decoding scores with).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from radcap.core.errors import RadcapError
from radcap.core.io import write_json
from radcap.data_contracts.features import GRID_CELLS, POOLED_DIM

CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "weights.weights.h5"  # a bundle's files
CONSENSUS_FILE = "consensus.json"  # a captioner's CIDEr-D document frequencies (consensus decoding)
CAPTIONER_FORMATS = ("radcap-captioner/1", "radcap-captioner/2", "radcap-captioner/3")
RETRIEVER_FORMATS = ("radcap-retriever/1", "radcap-retriever/2")


class DecodingConfig(BaseModel):
    """How the model writes its reports when a caller says nothing (chosen on validation after training)."""

    model_config = ConfigDict(extra="forbid")

    beam_width: int = Field(1, ge=1)
    length_penalty: float = 0.7
    no_repeat_ngram: int = Field(0, ge=0)
    consensus_samples: int = Field(
        0,
        ge=0,
        description="0: the beam's best report; N: of the beam's reports, the "
        "one with the highest mean CIDEr-D against N reports sampled from the model "
        "(minimum Bayes risk).",
    )


class SavedModelConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    format: str
    encoder_version: str
    encoder_spec: str | None = Field(None, description="Reloads exactly the encoder of the training features.")
    data_version: str | None = None
    feature_dim: int = POOLED_DIM
    grid_cells: int = GRID_CELLS

    def save(self, path: Path) -> None:
        write_json(self.model_dump(mode="json"), path)

    @classmethod
    def load(cls, path: Path, formats: tuple[str, ...]):
        """Read and check a config.json of one of `formats`; RadcapError naming the file otherwise."""
        what = formats[0].split("/")[0]
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RadcapError(f"{path.parent}: not a {what} (config.json: {exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") not in formats:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise RadcapError(
                f"{path.parent}: unsupported {what} format {found!r} (expected one of {', '.join(formats)})"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise RadcapError(f"{path}: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None


class CaptionerConfig(SavedModelConfig):
    format: Literal["radcap-captioner/1", "radcap-captioner/2", "radcap-captioner/3"] = "radcap-captioner/3"
    architecture: Literal["show-tell", "show-attend-tell"]
    embed_dim: int
    units: int
    attention_units: int = 256
    dropout: float
    max_views: int
    decoding: DecodingConfig = DecodingConfig()
    select_on: Literal["carve", "val"] | None = Field(
        None, description="Where its selection happened (SplitRules.select_on); None: saved before this was recorded."
    )


class RetrieverConfig(SavedModelConfig):
    format: Literal["radcap-retriever/1", "radcap-retriever/2"] = "radcap-retriever/2"
    dim: int
    embed_dim: int
    text_units: int
    hidden: int
    dropout: float
    max_views: int = 2
