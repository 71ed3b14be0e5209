"""`nightly_retrain`: ingest -> incremental features -> train -> evaluate on val -> promote (decided on val) ->
evaluate on test (reported, never deciding) (-> monitor), as one DAG.

Unchanged inputs are not recomputed: ingestion is skipped when the input files' fingerprint is the one
recorded last time, feature extraction only encodes images whose bytes it has not stored, and training
reuses the registered version trained on the same data version, encoder and settings. Registry steps
retry (see tasks/promote.py and tasks/caption.py); a failed run is simply run again.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from radcap.core.runtime import apply_offline_defaults
from radcap.core.settings import get_settings
from radcap.flows.evaluate import evaluate_flow
from radcap.flows.features import extract_features_flow
from radcap.flows.ingest import ingest_reports
from radcap.flows.monitor import monitor_flow
from radcap.flows.promote import promote_flow
from radcap.flows.train import train_flow
from radcap.pacs.dicomweb import is_dicomweb
from radcap.tasks.monitor import DriftAlarm
from radcap.tasks.nightly import ingest_is_current, ingest_summary, input_fingerprint, record_ingest


@flow(name="nightly-retrain")
def nightly_retrain(
    source: Path | str,
    workdir: Path,
    fmt: str = "iu-xml",
    images: Path | str | None = None,
    views: Path | None = None,
    split_file: Path | None = None,
    encoder: str | None = None,
    architecture: str | None = None,
    promote: bool = True,
    cluster: str | None = None,
    captions: Path | None = None,
) -> dict:
    """`cluster`: a Dask cluster for the feature extraction (default: settings' `cluster`; unset: in-process).
    `captions`: the bulk captioning output whose drafts the signed reports are compared with (`radcap monitor`);
    a drift alarm fails the run after everything else is done (the candidate is still trained and judged)."""
    apply_offline_defaults()  # a deployment's entry point
    settings = get_settings()
    data = workdir / "data"
    local = [p for p in (source, images) if not is_dicomweb(p or "")]
    fingerprint = input_fingerprint(
        [*(Path(p) if p is not None else None for p in local), views, split_file],
        {"format": fmt, "text": settings.text.model_dump(), "split": settings.split.model_dump()},
    )
    # A PACS is not fingerprinted, and pending signed reports wait for images that may have arrived: both ingest.
    if len(local) < 2 or not ingest_is_current(data, fingerprint):
        ingest_reports(fmt, source, data, images=images, views=views, split_file=split_file, settings=settings)
        record_ingest(data, fingerprint)
    ingested = ingest_summary(data)
    features = extract_features_flow(data, encoder, settings.encoder.batch_size, cluster=cluster)
    cfg = settings.captioner.model_copy(update={"architecture": architecture} if architecture else {})
    trained = train_flow(data, workdir / f"captioner-{cfg.architecture}", cfg, features["encoder_version"], reuse=True)
    # val decides (the candidate's evaluation, the gate); test is read only after the decision, to report.
    decides = settings.promotion.split
    selection = evaluate_flow(data, trained["registered"], decides, workdir / f"evaluation-{decides}")
    summary = {
        "data_version": ingested["data_version"],
        "reports": ingested["reports"],
        "features_encoded": features["encoded"],
        "encoder_version": features["encoder_version"],
        "captioner": trained["registered"],
        "retrained": not trained.get("reused", False),
        "decided_on": decides,
        f"{decides}_CIDEr": selection["CIDEr"],
    }
    if promote:
        decision = promote_flow(data, cfg.registered_name, trained["registered"].rsplit("/", 1)[1], out=workdir)
        summary.update(promotion=decision["outcome"], promotion_reason=decision["reason"])
        summary["latest_signed_reports"] = decision.get("latest_signed_reports", {})
    reported = evaluate_flow(data, trained["registered"], "test", workdir / "evaluation-test")
    summary.update({"test_CIDEr": reported["CIDEr"], "report": reported["report"]})
    if captions is not None:
        try:
            watched = monitor_flow(captions, [data], model=cfg.registered_name)
        except DriftAlarm as alarm:
            summary.update(monitor="degraded")
            raise DriftAlarm(f"{alarm} (the rest of the nightly run finished: {summary})") from None
        summary.update(monitor=watched["status"], monitor_message=watched["message"])
    return summary
