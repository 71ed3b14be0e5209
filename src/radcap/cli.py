"""The `radcap` command line: one subcommand per pipeline stage.

Each command imports its flow when it runs: flows import Prefect, MLflow and TensorFlow (seconds to load),
which `radcap --help` and `radcap contracts` do not need, and the offline defaults (Prefect home) must be set
by `main` before Prefect is first imported.

Exit codes: 0 success, 1 finished but some inputs were rejected (see rejects.parquet), 2 usage error or
an input the user must fix (the message names the file and the reason), 3 `radcap monitor`'s drift alarm.
"""

from __future__ import annotations

import signal
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from radcap import data_contracts
from radcap.core.catalog import DataCatalog, RunFolder
from radcap.core.errors import RadcapError
from radcap.core.logs import hide_user_error_tracebacks
from radcap.core.settings import get_settings
from radcap.operations.processes import die_with_parent, supervise

app = typer.Typer(
    help="radcap: radiology report generation pipeline (Prefect flows, Keras models, MLflow registry).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
OUTPUT = {"json": False}  # set by the --json option of the command group


@app.callback()
def _options(
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print each command's summary as one JSON object on stdout (for scripts), instead of a table.",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's INFO logs on the console.")] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show everything: INFO logs, Prefect's failure logs and tracebacks, also for mistakes in the input.",
        ),
    ] = False,
) -> None:
    OUTPUT["json"] = json_output
    from radcap.core.logs import DEBUG, configure_console
    from radcap.core.runtime import workspace_dir

    DEBUG["on"] = debug
    configure_console(verbose, debug, workspace_dir())


EXIT_OK, EXIT_REJECTS, EXIT_USAGE, EXIT_ALARM = 0, 1, 2, 3
NEEDS_TENSORFLOW = {
    "features",
    "optimize-encoder",
    "check-precision",
    "pretrain-encoder",
    "train",
    "evaluate",
    "caption",
    "caption-inbox",
    "promote",
    "nightly",
    "train-retrieval",
    "search",
    "retrieve",
    "demo",
}


class Format(StrEnum):
    iu_xml = "iu-xml"
    iu_csv = "iu-csv"
    medpix2 = "medpix2"
    manifest = "manifest"
    hl7 = "hl7"
    fhir = "fhir"
    dicom_sr = "dicom-sr"


SIGNED = {Format.hl7, Format.fhir, Format.dicom_sr}


def _cluster(spec: str | None) -> str | None:
    """--cluster, else RADCAP_CLUSTER; checked before any work starts (a typo is one line, exit 2)."""
    from radcap.operations.cluster import parse_cluster

    spec = spec or get_settings().cluster
    parse_cluster(spec)
    return spec


def _existing(path: Path | None, what: str) -> Path | None:
    if path is not None and not path.exists():
        raise RadcapError(f"{path}: {what} not found")
    return path


def _with_overrides(section, **options):
    """A settings section with the CLI options the user gave (None means: keep the configured value),
    validated like the configuration itself: a bad value is a usage error naming the setting."""
    from pydantic import ValidationError

    given = {k: v for k, v in options.items() if v is not None}
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise RadcapError(f"invalid {type(section).__name__} {error['loc'][0]}: {error['msg']}") from None


def _print_summary(title: str, summary: dict, keys: list[str]) -> None:
    if OUTPUT["json"]:
        import json

        print(json.dumps({k: summary[k] for k in keys if k in summary}, default=str))
        return
    table = Table(title=title, show_header=False)
    for key in keys:
        if key in summary:
            table.add_row(key, str(summary[key]))
    Console().print(table)


def _finish(title: str, summary: dict, what: str, rejects: Path | str, incomplete: bool = False) -> None:
    """Print the run's summary and exit 1 when inputs were rejected (saying where the reasons are) or are
    pending (`incomplete`), else 0."""
    _print_summary(title, summary, list(summary))
    if summary["rejected"]:
        console.print(f"[yellow]{summary['rejected']} {what} rejected; reasons in {rejects}[/yellow]")
    raise typer.Exit(EXIT_REJECTS if summary["rejected"] or incomplete else EXIT_OK)


def _location(value: str | None, what: str) -> Path | str | None:
    """A folder or file that must exist, or `dicomweb:URL` (a PACS) kept as text: a missing folder or a
    malformed address is one line, before any work."""
    from radcap.pacs.dicomweb import base_url, is_dicomweb

    if value is None:
        return None
    if is_dicomweb(value):
        base_url(value)
        return value
    return _existing(Path(value), what)


@app.command()
def ingest(
    fmt: Annotated[Format, typer.Option("--format", help="Layout of the source collection.")],
    source: Annotated[
        str,
        typer.Option(
            help="Folder (iu-xml, medpix2, iu-csv, hl7, fhir, dicom-sr) or file (iu-csv, manifest); "
            "dicom-sr also dicomweb:URL (the PACS's SR instances)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Data directory to write reports/images/rejects Parquet into.")],
    images: Annotated[
        str | None,
        typer.Option(
            help="Folder holding the image files; for hl7, fhir and dicom-sr a DICOM folder or dicomweb:URL "
            "(the studies the reports name are fetched from the PACS)."
        ),
    ] = None,
    views: Annotated[
        Path | None, typer.Option(help="IU projections CSV (uid, filename, projection) giving each image's view.")
    ] = None,
    split_file: Annotated[Path | None, typer.Option(help="R2Gen annotation.json: use the published IU split.")] = None,
) -> None:
    """Parse a report collection into validated Parquet tables (reports, images, rejects; pending for signed
    reports whose images have not arrived)."""
    from radcap.pacs.dicomweb import is_dicomweb

    if fmt not in SIGNED and (is_dicomweb(source) or is_dicomweb(images or "")):
        raise RadcapError(f"dicomweb:URL is for the signed-report formats (hl7, fhir, dicom-sr), not {fmt.value}")
    if fmt in SIGNED and images is None:
        raise RadcapError("--images is needed with signed reports: a DICOM folder, or dicomweb:URL of a PACS")
    where = _location(source, "source")
    assert where is not None
    image_location = _location(images, "images folder")
    _existing(views, "views CSV")
    _existing(split_file, "split file")
    from radcap.flows.ingest import ingest_reports

    hide_user_error_tracebacks()
    summary = ingest_reports(fmt.value, where, out, images=image_location, views=views, split_file=split_file)
    _print_summary(
        f"ingest {fmt.value} -> {out}",
        summary,
        [
            "report_inputs",
            "reports",
            "report_rejects",
            "pending",
            "images",
            "image_rejects",
            "images_found",
            "splits",
            "data_version",
        ],
    )
    if summary.get("pending"):
        console.print(f"{summary['pending']} reports wait for their images; see {out / 'pending.parquet'}")
    rejected = summary["report_rejects"] + summary["image_rejects"]
    if rejected:
        console.print(f"[yellow]{rejected} inputs rejected; reasons in {out / 'rejects.parquet'}[/yellow]")
    raise typer.Exit(EXIT_REJECTS if rejected else EXIT_OK)


@app.command()
def features(
    data: Annotated[Path, typer.Option(help="Data directory written by `radcap ingest`.")],
    encoder: Annotated[
        str | None,
        typer.Option(
            help="random[:SEED], a CheXNet .h5, a .keras file or models:/radcap-encoder/N (default: latest registered)."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=1024, help="Default from settings.")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32 (default), bf16 or int8: an optimized build "
            "(`radcap optimize-encoder`), stored as VERSION@PRECISION."
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run on Dask: local:N worker processes, or a scheduler "
            "tcp://HOST:8786 (default: RADCAP_CLUSTER; unset: in this process)."
        ),
    ] = None,
) -> None:
    """Encode every image of DATA with the CheXNet encoder into DATA/features (resumable, skips stored images)."""
    _existing(DataCatalog(data).images, "images table (run `radcap ingest` first)")
    from radcap.flows.features import extract_features_flow
    from radcap.imaging.precision import check_precision

    hide_user_error_tracebacks()
    summary = extract_features_flow(
        data,
        encoder,
        batch_size or get_settings().encoder.batch_size,
        check_precision(precision or get_settings().encoder.precision),
        _cluster(cluster),
    )
    catalog = DataCatalog(data)
    _finish(f"features -> {catalog.features}", summary, "images", catalog.feature_rejects)


@app.command("optimize-encoder")
def optimize_encoder(
    precision: Annotated[str, typer.Option(help="bf16 or int8.")],
    encoder: Annotated[
        str | None,
        typer.Option(help="The source encoder (as `radcap features --encoder`; default: latest registered)."),
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="int8: a folder of real images (PNG, JPEG, DICOM) like those it will encode.")
    ] = None,
    images: Annotated[
        int | None, typer.Option(min=16, help="int8: calibration images (default from settings).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where the build is written (default: out/optimized-encoder-PRECISION).")
    ] = None,
) -> None:
    """Build the encoder's inference graph at bf16 or int8 (OpenVINO; int8 calibrated on real images) once,
    and register it as `radcap-encoder-optimized` tagged with its source version and precision."""
    from radcap.imaging.precision import check_precision

    if check_precision(precision) == "fp32":
        raise RadcapError("fp32 is the encoder itself: nothing to build (give --precision bf16 or int8)")
    if precision == "int8":
        if calibration is None:
            raise RadcapError("int8 needs --calibration: a folder of real images to calibrate on")
        _existing(calibration, "calibration folder")
    from radcap.flows.optimize import optimize_encoder_flow

    hide_user_error_tracebacks()
    summary = optimize_encoder_flow(
        encoder,
        precision,
        calibration,
        out or Path(f"out/optimized-encoder-{precision}"),
        images or get_settings().encoder.optimize_calibration_images,
    )
    _print_summary("optimize-encoder", summary, list(summary))


@app.command("check-precision")
def check_precision_command(
    model: Annotated[
        str, typer.Option(help="The captioner or retriever: models:/NAME/N (a pass is recorded on that version).")
    ],
    data: Annotated[Path, typer.Option(help="Data directory with features at fp32 and at PRECISION.")],
    precision: Annotated[str, typer.Option(help="bf16 or int8.")],
    split: Annotated[str, typer.Option(help="A split no choice touched (the one you report on).")] = "test",
    meteor: Annotated[bool, typer.Option(help="Score METEOR (needs Java).")] = True,
) -> None:
    """Compare the captioner's reports from fp32 and PRECISION features of the same held-out studies (pooled
    cosine >= 0.99, BLEU-4/METEOR/ROUGE-L/CIDEr within 2% relative; for a retriever: image-to-report recall@1/5/10
    and mean recall within 2%); on a pass, `radcap caption --precision` (`radcap retrieve --precision`) accepts it.
    Exit 0 passed, 1 failed (reasons printed and in DATA/precision-check-PRECISION.json)."""
    from radcap.imaging.precision import check_precision

    _existing(DataCatalog(data).images, "images table (run `radcap ingest` first)")
    if check_precision(precision) == "fp32":
        raise RadcapError("fp32 is what the model was trained on: give --precision bf16 or int8")
    from radcap.flows.check_precision import check_precision_flow

    hide_user_error_tracebacks()
    summary = check_precision_flow(model, data, split, precision, data / f"precision-check-{precision}.json", meteor)
    _print_summary(f"check-precision {precision}", summary, list(summary))
    if not summary["passed"]:
        console.print(f"[yellow]not accepted at {precision}: {'; '.join(summary['failures'])}[/yellow]")
    raise typer.Exit(EXIT_OK if summary["passed"] else EXIT_REJECTS)


class SelectOn(StrEnum):
    carve = "carve"
    val = "val"


SELECT_ON_HELP = (
    "Where early stopping (and for `train` the length penalty and the guard threshold) is chosen: carve "
    "(a fixed 10% of the train split's groups, the default: val and test stay untouched and can be "
    "reported) or val."
)


@app.command("pretrain-encoder")
def pretrain_encoder(
    data: Annotated[list[Path], typer.Option(help="Data directory written by `radcap ingest` (repeatable).")],
    out: Annotated[Path | None, typer.Option(help="Run folder (default: FIRST_DATA/encoder).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default from settings).")] = None,
    image_size: Annotated[int | None, typer.Option(min=32, help="Training resolution (default from settings).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    select_on: Annotated[SelectOn | None, typer.Option(help=SELECT_ON_HELP)] = None,
) -> None:
    """Train the CheXNet encoder on labels derived from the data (MeSH, MedPix metadata, manifest labels),
    log it to MLflow and register it as `radcap-encoder`."""
    for d in data:
        _existing(DataCatalog(d).images, "images table (run `radcap ingest` first)")
    from radcap.flows.pretrain import pretrain_encoder_flow

    cfg = _with_overrides(
        get_settings().encoder, epochs=epochs, pretrain_size=image_size, pretrain_batch_size=batch_size
    )
    out = out or DataCatalog(data[0]).encoder_run
    hide_user_error_tracebacks()
    rules = _with_overrides(get_settings().split, select_on=select_on.value if select_on else None)
    summary = pretrain_encoder_flow(list(data), out, cfg, rules)
    _finish("pretrain-encoder", summary, "images", RunFolder(out).rejects)


class Architecture(StrEnum):
    show_tell = "show-tell"
    show_attend_tell = "show-attend-tell"


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Data directory with features (`radcap features`).")],
    architecture: Annotated[Architecture | None, typer.Option(help="Decoder (default from settings).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: DATA/captioner-ARCH).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    encoder_version: Annotated[
        str | None, typer.Option(help="Feature-store encoder version (default: last extracted).")
    ] = None,
    scst_epochs: Annotated[
        int | None,
        typer.Option(
            min=0, help="Self-critical (CIDEr-D) fine-tuning epochs after cross-entropy (default from settings: 0)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed of initialization, batches and sampling.")] = None,
    select_on: Annotated[SelectOn | None, typer.Option(help=SELECT_ON_HELP)] = None,
) -> None:
    """Train a report decoder (teacher forcing, early stopping on the selection set, optionally self-critical
    fine-tuning), log it to MLflow and register it as `radcap-captioner`."""
    _existing(DataCatalog(data).reports, "reports table (run `radcap ingest` first)")
    from radcap.flows.train import train_flow

    cfg = _with_overrides(
        get_settings().captioner,
        architecture=architecture.value if architecture else None,
        epochs=epochs,
        scst_epochs=scst_epochs,
        seed=seed,
    )
    rules = _with_overrides(get_settings().split, select_on=select_on.value if select_on else None)
    hide_user_error_tracebacks()
    summary = train_flow(
        data, out or DataCatalog(data).captioner_run(cfg.architecture), cfg, encoder_version, rules=rules
    )
    _print_summary(f"train {cfg.architecture}", summary, list(summary))
    raise typer.Exit(EXIT_REJECTS if summary["rejected"] else EXIT_OK)


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="Data directory with features.")],
    model: Annotated[
        str, typer.Option(help="models:/radcap-captioner/N, models:/radcap-captioner@champion or a bundle folder.")
    ],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for metrics.json, report.md, captions.csv (default: DATA/evaluation-SPLIT)."),
    ] = None,
    meteor: Annotated[bool, typer.Option(help="METEOR needs Java; --no-meteor skips it.")] = True,
    retriever: Annotated[
        str | None,
        typer.Option(
            help="Also score a contrastive retriever's top-1 report (models:/radcap-retriever/N or run folder)."
        ),
    ] = None,
    ood_data: Annotated[
        list[Path] | None,
        typer.Option(
            help="A data directory of images unlike the training ones, with features for the model's encoder: "
            "reports the share its domain guard catches (repeatable)."
        ),
    ] = None,
) -> None:
    """Score a captioner on a split: BLEU-1..4, METEOR, ROUGE-L, CIDEr and clinical F1, beside baselines."""
    if split not in ("train", "val", "test"):
        raise RadcapError(f"--split must be train, val or test, not '{split}'")
    _existing(DataCatalog(data).reports, "reports table (run `radcap ingest` first)")
    from radcap.flows.evaluate import evaluate_flow

    hide_user_error_tracebacks()
    summary = evaluate_flow(
        data, model, split, out or DataCatalog(data).evaluation(split), meteor, retriever, list(ood_data or [])
    )
    _print_summary(f"evaluate {split}", summary, list(summary))
    raise typer.Exit(EXIT_OK)


@app.command()
def caption(
    input: Annotated[
        str,
        typer.Option(
            "--input",
            help="A PACS export folder (DICOM, nested, any names) or PNG/JPEG files, or a PACS: "
            "dicomweb:http://HOST:PORT/dicom-web (its new or changed studies; credentials from RADCAP_PACS__*).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for the captions, caption_rejects and caption_history Delta tables and captions.csv."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="models:/NAME@ALIAS, models:/NAME/N or a bundle folder "
            "(default from settings: models:/radcap-captioner@champion)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, max=1024, help="Images per forward pass (default from settings).")
    ] = None,
    identifiers: Annotated[
        str | None,
        typer.Option(
            help="uid (DICOM UIDs) or hash (salted; salt from RADCAP_CAPTION__ID_SALT, else the workspace's own)."
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            help="Where the captioner's encoder file is now, when it was trained on a .h5/.keras encoder that moved "
            "(checked against the recorded version)."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Encoder precision: fp32 (default), bf16 or int8 (the "
            "registered optimized build, at which the captioner passed `radcap check-precision`)."
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run on Dask: local:N worker processes, or a scheduler "
            "tcp://HOST:8786 (default: RADCAP_CLUSTER; unset: in this process)."
        ),
    ] = None,
    consensus_samples: Annotated[
        int | None,
        typer.Option(
            help="0: the beam's most probable report (several "
            "times faster); N: consensus among N sampled reports "
            "(default: as the model was saved)."
        ),
    ] = None,
    sr: Annotated[
        bool, typer.Option("--sr", help="Write each captioned DICOM study's draft as a DICOM SR in OUT/sr/.")
    ] = False,
    fhir: Annotated[
        bool, typer.Option("--fhir", help="Write a FHIR DiagnosticReport per study: OUT/fhir/DiagnosticReport.ndjson.")
    ] = False,
    store: Annotated[
        str | None, typer.Option(help="Send each SR to this PACS by STOW-RS: dicomweb:http://HOST:PORT/dicom-web.")
    ] = None,
) -> None:
    """Caption every image under INPUT, one report per study; re-runs caption only new or changed files."""
    from radcap.pacs.dicomweb import is_dicomweb

    _location(input, "input")
    if store is not None and not is_dicomweb(store):
        raise RadcapError(f"--store {store}: give a PACS as dicomweb:http://HOST:PORT/dicom-web")
    from radcap.flows.caption import caption_flow

    cfg = _with_overrides(
        get_settings().caption,
        batch_size=batch_size,
        identifiers=identifiers,
        precision=precision,
        consensus_samples=consensus_samples,
    )
    hide_user_error_tracebacks()
    summary = caption_flow(input, out, model, cfg, encoder, _cluster(cluster), sr=sr, fhir=fhir, store=store)
    pending = summary.get("studies_pending", 0) + summary.get("reports_pending", 0)
    if pending:
        console.print(f"[yellow]{pending} studies or reports pending: the next run retries them[/yellow]")
    _finish(f"caption -> {out}", summary, "files", summary["rejects"], incomplete=bool(pending))


@app.command()
def history(
    out: Annotated[Path, typer.Option(help="An output folder of `radcap caption` or `caption-inbox`.")],
    study: Annotated[str, typer.Option(help="The study's id as the captions table gives it (UID or its hash).")],
) -> None:
    """Every report a study was given, oldest first, with the model, encoder, time and captions table version
    (`radcap.read_captions(OUT, as_of=VERSION)` reads the table as that report left it)."""
    from radcap.captioning.store import study_history

    _existing(out / "caption_history", "caption history (run `radcap caption` first)")
    rows = study_history(out, study)
    if not len(rows):
        raise RadcapError(f"{out}: no report was ever given to study {study} (ids as in the captions table)")
    if OUTPUT["json"]:
        print(rows.to_json(orient="records", date_format="iso"))
    else:
        table = Table(title=f"reports of study {study}")
        for column in ("table_version", "captioned_at", "model", "model_version", "encoder_version", "caption"):
            table.add_column(column)
        for row in rows.itertuples():
            table.add_row(
                *(
                    str(getattr(row, c))
                    for c in ("table_version", "captioned_at", "model", "model_version", "encoder_version", "caption")
                )
            )
        Console().print(table)


@app.command("migrate-captions")
def migrate_captions(
    out: Annotated[Path, typer.Option(help="An output folder written before captions were Delta tables.")],
) -> None:
    """Turn captions.parquet and rejects.parquet (and parts a crashed run left) into the Delta tables; the old
    files are kept in OUT/.pre-delta-TIME/. Running it again does nothing. `radcap caption` also does it first."""
    from radcap.captioning.store import migrate

    _existing(out, "output folder")
    summary = migrate(out, wait_seconds=get_settings().caption.lock_wait_seconds)
    _print_summary("migrate-captions", summary, list(summary))


@app.command("caption-inbox")
def caption_inbox(
    inbox: Annotated[
        Path, typer.Option(help="Folder whose sub-folders are batches (complete: marker file or settled).")
    ],
    out: Annotated[Path, typer.Option(help="Each batch is captioned into OUT/BATCH/.")],
    model: Annotated[str | None, typer.Option(help="Captioner (default from settings).")] = None,
    settle_seconds: Annotated[float | None, typer.Option(min=0, help="Default from settings.")] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run on Dask: local:N worker processes, or a scheduler "
            "tcp://HOST:8786 (default: RADCAP_CLUSTER; unset: in this process)."
        ),
    ] = None,
) -> None:
    """One run of the scheduled `caption_new_batches` flow: caption the complete batches nobody took yet."""
    _existing(inbox, "inbox")
    from radcap.flows.caption import caption_new_batches

    hide_user_error_tracebacks()
    cfg = _with_overrides(get_settings().caption, settle_seconds=settle_seconds)
    summary = caption_new_batches(inbox, out, model, cfg, _cluster(cluster))
    _print_summary("caption-inbox", summary, list(summary))


@app.command()
def monitor(
    captions: Annotated[Path, typer.Option(help="Output folder of `radcap caption` (its caption history).")],
    reports: Annotated[
        list[Path],
        typer.Option(help="Data directory of `radcap ingest --format hl7|fhir|dicom-sr` (repeat for several feeds)."),
    ],
    out: Annotated[Path | None, typer.Option(help="Where the tables go (default CAPTIONS/monitor).")] = None,
    model: Annotated[str | None, typer.Option(help="Registered model to watch (default: the newest drafts').")] = None,
    now: Annotated[str | None, typer.Option(help="End of the window, ISO time (default: the newest draft).")] = None,
) -> None:
    """Agreement of drafts with signed reports per model version and week; exit 3 when the champion drifted."""
    _existing(captions, "captions folder")
    for data in reports:
        _existing(data, "reports data directory")
    from radcap.flows.monitor import monitor_flow
    from radcap.tasks.monitor import DriftAlarm

    hide_user_error_tracebacks()
    try:
        summary = monitor_flow(captions, reports, out, model, now)
    except DriftAlarm as alarm:
        console.print(f"[red]drift alarm: {alarm}[/red]")
        raise typer.Exit(EXIT_ALARM) from None
    weeks = summary.pop("weeks")
    checks = summary.pop("checks")
    if OUTPUT["json"]:
        import json

        summary["weeks"] = json.loads(weeks.to_json(orient="records"))
        summary["checks"] = [vars(c) for c in checks]
        print(json.dumps(summary, default=str))
        raise typer.Exit(EXIT_OK)
    table = Table(title="Agreement of drafts with signed reports (interval: bootstrap over studies)")
    for column in ("version", "week", "drafted", "signed", "OOD rate", "CIDEr-D", "clinical F1", "words kept"):
        table.add_column(column)
    for row in weeks.to_dict("records"):
        table.add_row(
            row["model_version"],
            row["week"],
            str(row["drafted"]),
            str(row["signed"]),
            f"{row['ood_rate']:.3f}",
            *(_with_interval(row, m) for m in ("CIDEr", "clinical_F1", "words_kept")),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # a pipe gets the whole row, not wrapped
    _print_summary("monitor", summary, ["model", "champion_version", "drafts", "studies_with_signed_report", "status"])
    console.print(summary["message"])
    raise typer.Exit(EXIT_OK)


def _with_interval(row: dict, metric: str) -> str:
    value, low, high = row[metric], row[f"{metric}_low"], row[f"{metric}_high"]
    if value != value:  # NaN: no study to score (or no finding named, for clinical F1)
        return "-"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


@app.command()
def promote(
    data: Annotated[Path, typer.Option(help="Data directory with the held-out split and features.")],
    candidate: Annotated[str | None, typer.Option(help="Version number (default: the newest version).")] = None,
    name: Annotated[str | None, typer.Option(help="Registered model (default: radcap-captioner).")] = None,
    split: Annotated[str | None, typer.Option(help="val or test (default from settings).")] = None,
    metric: Annotated[str | None, typer.Option(help="Primary metric: CIDEr, BLEU-4, METEOR or ROUGE-L.")] = None,
    tolerance: Annotated[float | None, typer.Option(min=0, help="Clinical F1 the candidate may lose.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Compare and report; change nothing.")] = False,
) -> None:
    """Move the `champion` alias to the candidate only if it beats the champion on the same held-out reports."""
    _existing(DataCatalog(data).reports, "reports table (run `radcap ingest` first)")
    from radcap.flows.promote import promote_flow

    cfg = _with_overrides(get_settings().promotion, split=split, primary_metric=metric, clinical_tolerance=tolerance)
    hide_user_error_tracebacks()
    record = promote_flow(data, name, candidate, cfg, dry_run)
    if OUTPUT["json"]:
        return _print_summary("promote", record, list(record))
    _print_summary("promote", {**record, "metrics": ""}, ["outcome", "reason", "candidate", "champion", "split"])
    for version, values in record["metrics"].items():
        Console().print(f"version {version}: " + ", ".join(f"{k} {v}" for k, v in values.items()))


@app.command()
def rollback(
    name: Annotated[str | None, typer.Option(help="Registered model (default: radcap-captioner).")] = None,
) -> None:
    """Give the `champion` alias back to the previous champion."""
    from radcap.flows.promote import rollback_flow

    hide_user_error_tracebacks()
    result = rollback_flow(name)
    _print_summary("rollback", result, list(result))


@app.command()
def nightly(
    source: Annotated[str, typer.Option(help="Report collection (as for `radcap ingest`).")],
    workdir: Annotated[Path, typer.Option(help="Data, runs and evaluations go here.")],
    fmt: Annotated[Format, typer.Option("--format")] = Format.iu_xml,
    images: Annotated[str | None, typer.Option(help="As for `radcap ingest`.")] = None,
    views: Annotated[Path | None, typer.Option()] = None,
    split_file: Annotated[Path | None, typer.Option()] = None,
    encoder: Annotated[str | None, typer.Option(help="Default: latest registered radcap-encoder.")] = None,
    promote: Annotated[bool, typer.Option(help="Run the gated promotion at the end.")] = True,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run on Dask: local:N worker processes, or a scheduler "
            "tcp://HOST:8786 (default: RADCAP_CLUSTER; unset: in this process)."
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(help="Bulk captioning output to monitor against the signed reports (`radcap monitor`)."),
    ] = None,
) -> None:
    """One run of the `nightly_retrain` flow: ingest, incremental features, train, evaluate, promote, and with
    --captions monitor the champion's drafts (exit 3 on a drift alarm)."""
    where, image_location = _location(source, "source"), _location(images, "images folder")
    assert where is not None
    for path, what in ((views, "views CSV"), (split_file, "split file"), (captions, "captions folder")):
        _existing(path, what)
    from radcap.flows.nightly import nightly_retrain
    from radcap.tasks.monitor import DriftAlarm

    hide_user_error_tracebacks()
    try:
        summary = nightly_retrain(
            where,
            workdir,
            fmt.value,
            image_location,
            views,
            split_file,
            encoder,
            promote=promote,
            cluster=_cluster(cluster),
            captions=captions,
        )
    except DriftAlarm as alarm:
        console.print(f"[red]drift alarm: {alarm}[/red]")
        raise typer.Exit(EXIT_ALARM) from None
    _print_summary("nightly", summary, list(summary))


@app.command("train-retrieval")
def train_retrieval(
    data: Annotated[Path, typer.Option(help="Data directory with features (`radcap features`).")],
    out: Annotated[Path | None, typer.Option(help="Run folder (default: DATA/retriever).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    encoder_version: Annotated[
        str | None, typer.Option(help="Feature-store encoder version (default: last extracted).")
    ] = None,
    meteor: Annotated[bool, typer.Option(help="METEOR needs Java; --no-meteor skips it.")] = True,
) -> None:
    """Train the contrastive image-report model, evaluate it on val beside baselines, index the training
    pairs and register it as `radcap-retriever`."""
    _existing(DataCatalog(data).reports, "reports table (run `radcap ingest` first)")
    from radcap.flows.retrieval import train_retrieval_flow

    cfg = _with_overrides(get_settings().retrieval, epochs=epochs)
    hide_user_error_tracebacks()
    summary = train_retrieval_flow(data, out or DataCatalog(data).retriever_run, cfg, encoder_version, meteor)
    _print_summary("train-retrieval", summary, list(summary))


def _print_hits(table, title: str) -> None:
    if OUTPUT["json"]:
        return
    view = Table(title=title)
    for column in ("query", "rank", "score", "item_id", "text", "source"):
        view.add_column(column, overflow="fold")
    for row in table.itertuples():
        view.add_row(
            str(row.query)[:60], str(row.rank), f"{row.score:.3f}", row.item_id, row.text[:90], row.source[:50]
        )
    Console().print(view)


@app.command()
def search(
    text: Annotated[list[str], typer.Option(help="Text query, e.g. 'left pleural effusion' (repeatable).")],
    model: Annotated[
        str | None,
        typer.Option(
            help="Retriever: models:/radcap-retriever/N or a run folder (default: the newest registered retriever)."
        ),
    ] = None,
    top_k: Annotated[int | None, typer.Option(min=1)] = None,
    out: Annotated[Path | None, typer.Option(help="Also write results.parquet and results.csv here.")] = None,
) -> None:
    """Report-to-image search: the known images whose embeddings are closest to each text query."""
    from radcap.flows.retrieval import search_flow

    hide_user_error_tracebacks()
    cfg = get_settings().retrieval
    summary = search_flow(list(text), model or f"models:/{cfg.registered_name}/latest", top_k or cfg.top_k, out)
    _print_hits(summary["table"], "search")


@app.command()
def retrieve(
    input: Annotated[Path, typer.Option("--input", help="Images as for `radcap caption` (DICOM export or PNG/JPEG).")],
    out: Annotated[Path, typer.Option(help="Folder for results.parquet, results.csv and rejects.parquet.")],
    model: Annotated[
        str | None,
        typer.Option(
            help="Retriever: models:/radcap-retriever/N or a run folder (default: the newest registered retriever)."
        ),
    ] = None,
    top_k: Annotated[int | None, typer.Option(min=1)] = None,
    encoder: Annotated[
        str | None, typer.Option(help="Where the retriever's encoder file is now (see `radcap caption --encoder`).")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Encoder precision: fp32 (default), bf16 or int8 (the "
            "registered optimized build, at which the retriever passed `radcap check-precision`)."
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run on Dask: local:N worker processes, or a scheduler "
            "tcp://HOST:8786 (default: RADCAP_CLUSTER; unset: in this process)."
        ),
    ] = None,
) -> None:
    """Image-to-report retrieval: the closest known reports for each new study, with scores."""
    _existing(input, "input")
    from radcap.flows.retrieval import retrieve_flow
    from radcap.imaging.precision import check_precision

    hide_user_error_tracebacks()
    cfg = get_settings().retrieval
    summary = retrieve_flow(
        input,
        model or f"models:/{cfg.registered_name}/latest",
        top_k or cfg.top_k,
        out,
        encoder,
        check_precision(precision or cfg.precision),
        _cluster(cluster),
    )
    _print_hits(summary["table"], f"retrieve -> {out}")
    summary.pop("table")
    _finish(f"retrieve -> {out}", summary, "files", summary["rejects"])


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder to write the synthetic IU-layout sample into.")],
    studies: Annotated[int | None, typer.Option(help="Number of studies (default from settings).")] = None,
) -> None:
    """Write the embedded default dataset: synthetic chest radiograph phantoms with IU-layout XML reports."""
    from radcap.ingestion.phantoms import write_sample

    written = write_sample(out, _with_overrides(get_settings().sample, studies=studies))
    console.print(f"wrote {written['studies']} studies, {written['images']} images to {out}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the sample and every stage's outputs go.")] = Path("out/demo"),
) -> None:
    """The main job end to end on the embedded default sample (no data, no server needed)."""
    from radcap.flows.demo import demo_pipeline

    hide_user_error_tracebacks()
    summary = demo_pipeline(workdir)
    _print_summary(f"demo -> {workdir}", summary, list(summary))


@app.command("app")
def web_app(
    model: Annotated[
        str | None,
        typer.Option(
            help="Captioner: models:/NAME@ALIAS, models:/NAME/N or a folder. "
            "Default: the configured champion, else (after `make demo`) the demo's."
        ),
    ] = None,
    retriever: Annotated[
        str | None,
        typer.Option(
            help="Retriever for the closest training reports (default: the newest registered one, when there is one)."
        ),
    ] = None,
    studies: Annotated[
        Path | None, typer.Option(help="A folder of studies (PACS export, PNG/JPEG) to pick from.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (0.0.0.0: the network).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """A web page for one study: upload its images (or pick one), read the report, where the model looked for
    each word, the findings it states, the closest training reports; and the registered versions. Ctrl-C stops it."""
    import subprocess

    from radcap.web.launch import streamlit_command, with_embedded_default

    cfg = _with_overrides(
        get_settings().app,
        model=model,
        retriever=retriever,
        studies=_existing(studies, "folder of studies"),
        host=host,
        port=port,
    )
    cfg, note = with_embedded_default(cfg, model is not None)
    if note:
        console.print(note)
    argv, env = streamlit_command(cfg)
    console.print(f"radcap app: http://{cfg.host}:{cfg.port} (model {cfg.model}; Ctrl-C stops it)")
    raise typer.Exit(_server_exit(supervise(lambda: subprocess.Popen(argv, env=env, preexec_fn=die_with_parent))))


def _server_exit(code: int) -> int:
    """A server stopped as asked (SIGINT, SIGTERM) is a success; anything else is its own exit code."""
    return EXIT_OK if code in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM) else code


@app.command("serve")
def serve(
    model: Annotated[
        str | None,
        typer.Option(help="models:/NAME@ALIAS or models:/NAME/N (default from settings: the champion)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Listen address (0.0.0.0: the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 5001,
    workers: Annotated[int, typer.Option(min=1, help="Server processes answering requests.")] = 1,
) -> None:
    """The REST endpoint of a registered captioner (MLflow's scoring server, as `mlflow models serve --env-manager
    local` runs it, from this environment): POST a study's images as base64 to /invocations. Ctrl-C stops it."""
    from radcap.serving.rest import start_rest_server

    uri = model or get_settings().caption.model
    console.print(f"radcap serve: http://{host}:{port}/invocations (model {uri}; GET /ping; Ctrl-C stops it)")
    raise typer.Exit(_server_exit(supervise(lambda: start_rest_server(uri, host, port, workers))))


server_app = typer.Typer(
    help="Keep one local Prefect server alive for many commands (instead of a temporary one each).",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(port: Annotated[int | None, typer.Option(help="Default: a free port.")] = None) -> None:
    """Start a local Prefect server in the background; later commands use it (PREFECT_API_URL still wins)."""
    from radcap.operations import server

    _print_summary("server", server.start(port), ["started", "api_url", "pid", "log"])


@server_app.command("stop")
def server_stop() -> None:
    """Stop the server `radcap server start` started."""
    from radcap.operations import server

    result = server.stop()
    _print_summary("server", result, list(result))


@server_app.command("status")
def server_status() -> None:
    """Whether a kept-alive server runs, and where; exit 1 when none does."""
    from radcap.operations import server

    state = server.running()
    _print_summary("server", state or {"running": False}, list(state or {"running": False}))
    raise typer.Exit(EXIT_OK if state else EXIT_REJECTS)


@app.command()
def contracts() -> None:
    """Print every table contract (columns, types, meaning) as Markdown."""
    print("\n\n".join(c.describe() for c in data_contracts.ALL))


def main(argv: list[str] | None = None) -> None:
    """Typer handles usage errors itself (exit 2); a RadcapError is the user's to fix: one line, exit 2.
    Any other exception is a fault that stopped the run: its traceback (a bug to report), then one line, exit 2
    (never 1, which means "finished, some inputs rejected")."""
    from radcap.core.runtime import apply_offline_defaults

    apply_offline_defaults()  # before Prefect, MLflow or Keras is imported by a command
    from radcap.operations.server import use_running_server

    use_running_server()  # a server kept alive by `radcap server start` spares each command a temporary one
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if words and words[0] in NEEDS_TENSORFLOW:
        from radcap.core.runtime import import_tensorflow_quietly

        import_tensorflow_quietly()
    try:
        app(args=argv)
    except RadcapError as exc:
        from radcap.core.logs import DEBUG

        if DEBUG["on"]:
            traceback.print_exc()
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/bold red]: what was written so far is kept; run again to finish")
        sys.exit(130)
    except Exception as exc:
        traceback.print_exc()
        console.print(
            f"[bold red]error:[/bold red] the run stopped on an unexpected fault "
            f"({type(exc).__name__}: {exc}); outputs written so far are kept, and a re-run resumes",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
