"""The one typed place for radcap's configuration.

Values come from, in order of precedence: explicit CLI options, `RADCAP_*` environment variables
(nested with `__`, e.g. `RADCAP_TEXT__TARGET=findings`), a TOML file named by `RADCAP_CONFIG`, and the
defaults below. Every stage receives a `Settings` (or a section of it) instead of reading globals.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from radcap.core.errors import RadcapError

TargetSection = Literal["impression", "findings", "findings+impression"]


class TextRules(BaseModel):
    """How raw report text becomes the normalized training target. Raw text is always kept too."""

    target: TargetSection = Field(
        "impression",
        description="Which IU section is the caption target. When it is empty the other section is used "
        "(if `fallback_to_other_section`), so a study with only findings still has a target.",
    )
    fallback_to_other_section: bool = True
    lowercase: bool = True
    anonymized_pattern: str = Field(
        r"X{2,}", description="IU de-identification placeholders ('XXXX', also inside 'x-XXXX')."
    )
    anonymized: Literal["keep", "drop"] = Field(
        "keep",
        description="keep: replace each placeholder by `anonymized_token` (R2Gen-style, keeps published "
        "metrics comparable and sentences grammatical); drop: delete it.",
    )
    anonymized_token: str = "xxxx"
    strip_list_numbering: bool = Field(True, description="'1. No effusion. 2. ...' -> 'No effusion. ...'")
    empty_values: tuple[str, ...] = Field(
        ("", "none", "none.", "n/a", "na"),
        description="Section values treated as absent (compared after stripping and lowercasing).",
    )
    placeholder_patterns: tuple[str, ...] = Field(
        (
            r"\breplace this\b",
            r"\bdescription of (?:the )?(?:image|findings)\b",
            r"\binsert (?:a |the )?(?:caption|description|text|findings)\b",
            r"\blorem ipsum\b",
            r"^\W*(?:see above|see below|as above|same as above|see report|n/?a|none|nil|tbd|pending|"
            r"to be (?:added|completed|determined))\W*$",
            r"^[\W_]*$",  # only punctuation
            r"^(?:(?:x{2,}|\[?redacted\]?|\*{3,}|_{3,})[\W_]*)+$",  # only anonymisation tokens
        ),
        description="A section (or caption) whose normalized text matches one of these (case-insensitive) is a "
        "template placeholder or empty boilerplate: treated as absent, and a report left without text is a "
        "reject naming it ('Replace this - DESCRIPTION OF THE IMAGE' in MedPix 2.0).",
    )


class SplitRules(BaseModel):
    """Deterministic group-level split used when a dataset has no official split, and where model selection
    (early stopping, the length penalty, the domain guard's threshold) happens."""

    train: float = 0.7
    val: float = 0.1
    test: float = 0.2
    salt: str = "radcap-split-v1"
    select_on: Literal["carve", "val"] = Field(
        "carve",
        description="carve: select on a deterministic `select_fraction` of the train split's groups "
        "(patients, cases), so the val and test splits stay untouched by every choice and can be reported; "
        "val: select on the val split (then do not report on it).",
    )
    select_fraction: float = Field(0.1, gt=0, lt=0.5)
    select_salt: str = "radcap-select-v1"

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitRules:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.val, self.test) < 0:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {total:.3f}")
        return self


class SampleSettings(BaseModel):
    """The embedded default dataset: synthetic chest radiograph phantoms with IU-layout reports (the demo's
    training settings are the profile `src/radcap/core/profiles/demo.toml`)."""

    studies: int = 60
    image_size: int = 256
    seed: int = 7
    export_studies: int = Field(4, description="New phantom studies in the PACS-like DICOM batch the demo captions.")


class EncoderSettings(BaseModel):
    """The CheXNet encoder: feature extraction and `radcap pretrain-encoder` (CheXNet recipe, from scratch)."""

    input_size: int = Field(224, description="Feature extraction size; 224 gives the 7x7 attention grid.")
    precision: Literal["fp32", "bf16", "int8"] = Field(
        "fp32",
        description="Inference precision of `radcap "
        "features` (bf16/int8: an optimized build, radcap.imaging.precision).",
    )
    optimize_calibration_images: int = Field(300, description="Real images int8 calibration reads.")
    batch_size: int = 32
    cluster_task_images: int = Field(
        2048,
        ge=1,
        description="`radcap features --cluster`: images per task, each "
        "task one part file (radcap.imaging.features.PART_ROWS); a lost worker re-encodes at most this.",
    )
    pretrain_size: int = Field(
        224,
        description="Training resolution. The network is fully convolutional, so a smaller size (e.g. 160) "
        "trains ~2x faster on a CPU and the encoder still extracts at `input_size`.",
    )
    pretrain_batch_size: int = 16
    epochs: int = Field(16, description="The cosine schedule's length (16 at 160 px: +11 points over random, README).")
    learning_rate: float = 1e-3
    warmup_epochs: float = Field(1.0, description="Linear warm-up of the rate, then cosine decay to the floor.")
    min_lr_ratio: float = Field(0.01, description="The cosine schedule's floor as a fraction of `learning_rate`.")
    early_stop_patience: int = Field(4, description="Epochs without a better val loss before stopping.")
    min_label_count: int = Field(5, description="A label needs this many positive training images to be learnt.")
    rotation_degrees: float = 10.0
    zoom: float = 0.15
    shift: float = 0.08
    seed: int = 0
    registered_name: str = "radcap-encoder"


class DecoderSettings(BaseModel):
    """The report decoders (`radcap train`) and their decoding (section `captioner`)."""

    architecture: Literal["show-tell", "show-attend-tell"] = "show-attend-tell"
    embed_dim: int = 256
    units: int = 512
    attention_units: int = 256
    dropout: float = 0.3
    max_views: int = Field(2, description="Images per study the decoder sees (IU: frontal + lateral).")
    min_count: int = Field(3, description="Vocabulary: a token needs this many training occurrences.")
    max_length: int = Field(60, description="Tokens per caption including <start> and <end>.")
    batch_size: int = 32
    learning_rate: float = 5e-4
    clip_norm: float = 5.0
    epochs: int = 30
    patience: int = Field(5, description="Epochs without a better validation metric before stopping.")
    min_epochs: int = Field(
        10,
        description="No early stop before this: greedy captions of an early model are "
        "degenerate, so caption metrics are noise for the first epochs.",
    )
    selection_metric: Literal["CIDEr", "BLEU-4", "ROUGE-L", "val_loss"] = "CIDEr"
    seed: int = 0
    beam_width: int = Field(10, description="Beam search width: with consensus decoding, the candidates.")
    length_penalty: float = Field(0.7, description="Used when `length_penalty_grid` is empty.")
    length_penalty_grid: tuple[float, ...] = Field(
        (0.7, 1.0, 1.5, 2.0, 3.0),
        description="After training, the length penalty giving the best validation "
        "selection metric with beam search is chosen from these and saved with the model: beam search favours "
        "short captions, and how much to correct depends on the dataset (IU impressions are short, MedPix "
        "captions long).",
    )
    no_repeat_ngram: int = Field(
        3,
        description="Decoding never repeats an n-gram of this size, nor immediately "
        "repeats a phrase shorter than it (0: no blocking).",
    )
    consensus_samples: int = Field(
        20,
        ge=0,
        description="Consensus (minimum Bayes risk) decoding: of the beam's "
        "`beam_width` reports, write the one with the highest mean CIDEr-D against this "
        "many reports sampled from the model (0: the beam's most probable report). The "
        "beam's reports do not depend on the length penalty, so none is chosen with it. "
        "Chosen on held-back train groups (benchmarks/consensus_decoding.py).",
    )
    scst_epochs: int = Field(
        0,
        ge=0,
        description="Self-critical fine-tuning after cross-entropy (0: none): "
        "REINFORCE with CIDEr-D as reward (`scst_baseline`); the selection "
        "set decides whether its weights replace the cross-entropy ones.",
    )
    scst_samples: int = Field(5, ge=2, description="Captions sampled per study in each SCST step.")
    scst_baseline: Literal["samples", "greedy"] = Field(
        "samples",
        description="What a sample's reward is compared with: the mean reward of the study's other "
        "samples (Luo 2020) or the greedy caption's (Rennie et al. 2017). On MedPix 2.0 a cross-entropy model's "
        "samples earned less than half the CIDEr-D of its greedy captions (0.029 vs 0.070), so with the greedy "
        "baseline nearly every advantage was negative; the others' mean centres them.",
    )
    scst_learning_rate: float = Field(
        5e-5,
        description="Adam moves each weight by about this much per step, whatever "
        "the reward's scale; rewards of sampled reports are sparse and noisy, and 2e-4 "
        "lost half the selection CIDEr in one epoch on MedPix 2.0.",
    )
    scst_top_k: int = Field(0, ge=0, description="Sample each word from the model's k most probable (0: from all).")
    scst_xe_weight: float = Field(
        0.0,
        ge=0,
        description="Adds this x the teacher-forced cross-entropy of the "
        "studies' own reports to the SCST loss (a mixed objective; 0: SCST alone).",
    )
    scst_dropout: bool = Field(False, description="Dropout on in the SCST step (the captions are sampled without).")
    scst_neighbours: int = Field(
        0,
        ge=0,
        description="Also reward a sampled caption by CIDEr-D against the reports "
        "of its study's k most similar training studies of other patients or cases (pooled "
        "cosine; 0: its own report only). A decoder that has memorised its training reports "
        "is rewarded for reproducing them; what similar images' reports share is what a "
        "new image's report is likely to say.",
    )
    scst_neighbour_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="With `scst_neighbours`: reward = (1 - w) x "
        "CIDEr-D against the own report + w x its mean against the neighbours'.",
    )
    scst_clinical_weight: float = Field(
        0.0,
        ge=0,
        description="Adds this x the report's clinical agreement "
        "(finding labeler, invented findings count) to the CIDEr-D reward.",
    )
    registered_name: str = "radcap-captioner"


class RetrievalSettings(BaseModel):
    """The contrastive image-report model (`radcap train-retrieval`, `radcap search`, `radcap retrieve`)."""

    dim: int = Field(256, description="Joint embedding size.")
    embed_dim: int = 256
    text_units: int = 256
    hidden: int = 512
    dropout: float = 0.1
    min_count: int = 2
    max_length: int = 60
    batch_size: int = Field(64, description="In-batch negatives: bigger batches give harder contrast.")
    learning_rate: float = 1e-3
    epochs: int = 30
    patience: int = Field(5, description="Epochs without a better validation mean recall before stopping.")
    seed: int = 0
    top_k: int = 5
    max_views: int = Field(2, description="Images per study the image tower averages.")
    registered_name: str = "radcap-retriever"
    precision: Literal["fp32", "bf16", "int8"] = Field(
        "fp32",
        description="Encoder precision of `radcap retrieve` (bf16/int8: the registered optimized build; the "
        "retriever must have passed `radcap check-precision` at it).",
    )


class BulkCaptioningSettings(BaseModel):
    """Bulk captioning of image folders (`radcap caption`) and the inbox flow (section `caption`)."""

    model: str = Field("models:/radcap-captioner@champion", description="Captioner used when none is given.")
    batch_size: int = Field(32, description="Images encoded per forward pass; memory is bounded by it.")
    precision: Literal["fp32", "bf16", "int8"] = Field(
        "fp32",
        description="Encoder precision (bf16/int8: the registered optimized build; the captioner must "
        "have passed `radcap check-precision` at it).",
    )
    identifiers: Literal["uid", "hash"] = Field(
        "uid", description="Output study/image ids: DICOM UIDs as they are, or salted SHA-256 of them."
    )
    id_salt: str = Field(
        "",
        description="Salt for `identifiers = hash` (RADCAP_CAPTION__ID_SALT). Empty: a random "
        "salt made once per workspace and kept in WORKSPACE/id_salt, never an empty one.",
    )
    lock_wait_seconds: float = Field(
        10.0,
        description="A second run writing the same output folder waits this "
        "long for the first to finish, then stops with exit 2.",
    )
    ood_policy: Literal["flag", "withhold"] = Field(
        "flag",
        description="A study out of the model's domain: `flag` writes its caption with in_domain false; "
        "`withhold` writes no caption, and the row says why.",
    )
    consensus_samples: int | None = Field(
        None,
        ge=0,
        description="None: decode as the model was saved to; 0: the "
        "beam's most probable report (several times faster than consensus "
        "decoding); N: consensus among N sampled reports.",
    )
    retention_days: float = Field(
        30.0,
        ge=0,
        description="The captions tables keep every version this many days (`read_captions(as_of=...)`, "
        "readers of an older snapshot); `vacuum` then removes the files no version needs. The caption "
        "history table is never vacuumed of its rows.",
    )
    compact_files: int = Field(
        64, ge=2, description="A captions table holding more data files than this is compacted (`optimize`)."
    )
    ready_marker: str = Field(".complete", description="A batch folder holding this file is complete.")
    settle_seconds: float = Field(
        300.0, description="A batch folder without the marker is complete once nothing in it changed for this long."
    )
    claim_timeout_seconds: float = Field(
        6 * 3600.0,
        description="A claim older than this with no result is "
        "taken to be from a crashed run, and the batch is taken again.",
    )


class PromotionSettings(BaseModel):
    """Gated promotion of a captioner version to the `champion` alias (`radcap promote`)."""

    primary_metric: Literal["CIDEr", "BLEU-4", "METEOR", "ROUGE-L"] = "CIDEr"
    clinical_metric: Literal["clinical_micro_f1", "clinical_macro_f1"] = "clinical_micro_f1"
    clinical_tolerance: float = Field(0.02, description="The candidate may lose at most this much clinical F1.")
    confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1.0,
        description="Promote only when the paired bootstrap puts the "
        "primary-metric gain above zero with this confidence (one-sided).",
    )
    bootstrap_samples: int = Field(1000, ge=100, description="Resamples of the held-out reports.")
    split: Literal["val"] = Field(
        "val",
        description="The split the gate decides on. Only `val`: with the carve (`split.select_on`) training never "
        "reads it, and `test` stays the split radcap reports, which no decision touched.",
    )
    alias: str = "champion"
    latest_signed_reports: int = Field(
        200,
        ge=1,
        description="The promotion record shows each version's agreement with this many most recently signed "
        "clinical reports among those compared (shown, never deciding).",
    )

    @field_validator("split", mode="before")
    @classmethod
    def _never_test(cls, value: object) -> object:
        if value == "test":
            raise ValueError(
                "promotion decides on val and never on test: test is the split radcap reports, and a gate that "
                "picks the model on it biases every number reported there (about one candidate in twenty with no "
                "real gain passes a one-sided 95% gate)"
            )
        return value


class DomainSettings(BaseModel):
    """The out-of-domain guard every trained captioner and retriever carries (src/radcap/domain/guard.py)."""

    percentile: float = Field(
        95.0,
        gt=50,
        lt=100,
        description="Threshold: this percentile of the training studies' scores, out of fold "
        "(about 100 - percentile % of in-domain studies are flagged, two-view studies included).",
    )
    signals: list[Literal["features", "layers", "image"]] = Field(
        ["layers", "image"],
        min_length=1,
        description="What the guard judges, combined (radcap.domain.guard): the encoder's pooled features, its early "
        "layers' statistics, the images' pixel statistics. The default was chosen on half of the chest X-ray "
        "patients of benchmarks/domain_guard.py and reported on the other half (docs/results.md).",
    )
    explained_variance: float = Field(0.95, gt=0.5, le=1.0, description="The principal components kept.")
    max_chroma: float | None = Field(
        0.05,
        description="An image whose colour channels differ by more than this "
        "(mean, share of full scale) is flagged: radiological images are grayscale. "
        "None turns the rule off (a collection with colour overlays).",
    )


class AppSettings(BaseModel):
    """The page for one study (`radcap app`, section `app`)."""

    model: str = Field("models:/radcap-captioner@champion", description="The captioner the page serves.")
    retriever: str | None = Field(
        "models:/radcap-retriever/latest",
        description="Closest training reports come from it when it is registered (the page says so when it is not).",
    )
    studies: Path | None = Field(None, description="A folder (a PACS export, PNG/JPEG files) to pick studies from.")
    neighbours: int = Field(5, ge=1, le=50, description="Closest training reports shown.")
    max_upload_mb: int = Field(64, ge=1, le=512, description="A larger uploaded file is refused with a message.")
    host: str = Field("127.0.0.1", description="Listen address; 0.0.0.0 exposes the page to the network.")
    port: int = 8501


class PacsSettings(BaseModel):
    """A PACS spoken to over DICOMweb (`--input dicomweb:URL`, `--store dicomweb:URL`; section `pacs`). Secrets
    come from the environment (RADCAP_PACS__PASSWORD, RADCAP_PACS__TOKEN) and are never logged."""

    username: str | None = Field(None, description="HTTP basic authentication user (with `password`).")
    password: SecretStr | None = Field(None, description="HTTP basic authentication password.")
    token: SecretStr | None = Field(None, description="Bearer token (instead of a user and password).")
    verify_tls: bool = Field(True, description="Check the server's TLS certificate (https URLs).")
    ca_bundle: Path | None = Field(None, description="CA certificates to check it against (default: the system's).")
    timeout_seconds: float = Field(30.0, gt=0, description="Connecting, and each wait for bytes of a response.")
    response_seconds: float = Field(
        300.0, gt=0, description="A whole response (one study's instances) may take this long, then it is cut."
    )
    max_response_mb: int = Field(2048, ge=1, description="A larger response (one study) is cut: never unbounded.")
    retries: int = Field(4, ge=0, le=20, description="Tries after the first on a 5xx, a timeout or a lost link.")
    backoff_seconds: float = Field(0.5, ge=0, description="First wait between tries; doubled each time.")
    studies_per_chunk: int = Field(
        256,
        ge=1,
        description="Studies fetched, captioned and committed together (the next chunk is fetched "
        "meanwhile): disk and memory hold two chunks.",
    )
    modalities: list[str] = Field([], description="Only studies with one of these modalities (QIDO ModalitiesInStudy).")
    study_date_from: str | None = Field(None, description="YYYYMMDD: only studies from that date on.")
    study_date_to: str | None = Field(None, description="YYYYMMDD: only studies up to that date.")
    poll_minutes: int = Field(15, ge=1, description="The `pacs` deployment polls every N minutes.")


class IngestSettings(BaseModel):
    """Signed clinical reports in (`radcap ingest --format hl7|fhir|dicom-sr`)."""

    max_pending_days: int = Field(
        30,
        ge=0,
        description="A signed report whose study has no images is pending (tried again by every run) for at most "
        "this many days, then a reject saying its images never arrived.",
    )
    pseudonym_salt: SecretStr | None = Field(
        None,
        description="Key of the patient and accession pseudonyms (RADCAP_INGEST__PSEUDONYM_SALT); the patient's "
        "pseudonym is the split group, so one key gives the same splits on every machine and data directory. "
        "Unset: a random key made once per data directory (DATA/.pseudonym_salt): splits stable there only.",
    )


class MonitorSettings(BaseModel):
    """Production agreement of drafts with signed reports, and the drift alarm (`radcap monitor`)."""

    baseline_days: int = Field(
        28, ge=1, description="The champion's first N days of drafts in production: what later weeks are held to."
    )
    window_days: int = Field(
        14, ge=1, description="The rolling window compared with the baseline (benchmarks/drift_alarm.py chose it)."
    )
    min_studies: int = Field(
        30, ge=1, description="Fewest studies with a signed report in the baseline and in the window to judge drift."
    )
    max_relative_drop: float = Field(
        0.20,
        gt=0,
        lt=1,
        description="Alarm when an agreement metric (CIDEr-D, clinical F1, words kept) of the window is more than "
        "this share below the baseline and the bootstrap interval of the drop excludes zero.",
    )
    max_ood_rise: float = Field(
        0.10,
        gt=0,
        lt=1,
        description="Alarm when the out-of-domain rate of the window exceeds the baseline's by more than this "
        "(absolute) and the interval of the rise excludes zero.",
    )
    bootstrap_samples: int = Field(1000, ge=100, description="Resamples for each interval.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Two-sided confidence of every interval.")


class TrackingSettings(BaseModel):
    """MLflow experiment names, one per stage."""

    encoder: str = "radcap-encoder"
    captioner: str = "radcap-captioner"
    retrieval: str = "radcap-retrieval"
    evaluation: str = "radcap-evaluation"
    monitor: str = "radcap-monitor"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADCAP_", env_nested_delimiter="__", extra="forbid")

    text: TextRules = TextRules()
    split: SplitRules = SplitRules()
    sample: SampleSettings = SampleSettings()
    encoder: EncoderSettings = EncoderSettings()
    captioner: DecoderSettings = DecoderSettings()
    caption: BulkCaptioningSettings = BulkCaptioningSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    promotion: PromotionSettings = PromotionSettings()
    domain: DomainSettings = DomainSettings()
    app: AppSettings = AppSettings()
    pacs: PacsSettings = PacsSettings()
    ingest: IngestSettings = IngestSettings()
    monitor: MonitorSettings = MonitorSettings()
    tracking: TrackingSettings = TrackingSettings()
    cluster: str | None = Field(
        None,
        description="Dask cluster for features, caption, retrieve and the inbox "
        "and nightly flows (RADCAP_CLUSTER): local:N worker processes, or a scheduler "
        "address tcp://HOST:8786; unset: in-process (radcap.operations.cluster).",
    )
    cluster_task_images: int = Field(
        256,
        ge=1,
        description="`radcap caption`/`retrieve --cluster`: images per task (whole studies): "
        "a lost worker costs at most this much work again.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if settings_cls.model_config.get("toml_file"):
            return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)
        return init_settings, env_settings


PROFILES = Path(__file__).resolve().parent / "profiles"


def load_settings(config_file: Path | str | None = None) -> Settings:
    """Settings from `RADCAP_*` variables over a TOML file (a profile such as `PROFILES / "demo.toml"`, or
    the file named by `RADCAP_CONFIG`) over the defaults above."""
    if config_file is None:
        return Settings()
    path = Path(config_file)
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RadcapError(f"{path}: cannot read the configuration file: {exc}") from exc
    profile = type("ProfileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    try:
        return profile()
    except ValueError as exc:
        raise RadcapError(f"invalid configuration in {path}: {exc}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from `RADCAP_*` variables over the optional TOML file named by `RADCAP_CONFIG`."""
    try:
        return load_settings(os.environ.get("RADCAP_CONFIG"))
    except ValueError as exc:
        raise RadcapError(f"invalid configuration: {exc}") from exc
