"""The main job on the embedded default: sample -> ingest -> pretrain encoder -> features -> train -> evaluate
-> promote (gated; the first model becomes champion) -> caption a PACS-like DICOM batch with the champion.

Its settings are the demo profile (`radcap/profiles/demo.toml`: smoke-run epochs, `-demo` registry names),
read like any RADCAP_CONFIG file, so RADCAP_* variables still win."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from radcap.core.runtime import apply_offline_defaults
from radcap.core.settings import PROFILES, load_settings
from radcap.flows.caption import caption_flow
from radcap.flows.evaluate import evaluate_flow
from radcap.flows.features import extract_features_flow
from radcap.flows.ingest import ingest_reports
from radcap.flows.pretrain import pretrain_encoder_flow
from radcap.flows.promote import promote_flow
from radcap.flows.train import train_flow
from radcap.tasks.sample import make_pacs_export, make_sample


@flow(name="radcap-demo")
def demo_pipeline(workdir: Path) -> dict:
    apply_offline_defaults()  # a deployment's entry point
    settings = load_settings(PROFILES / "demo.toml")
    sample = make_sample(workdir / "sample", settings.sample)
    data = workdir / "data"
    ingest = ingest_reports(
        "iu-xml",
        sample / "ecgen-radiology",
        data,
        images=sample / "images",
        views=sample / "indiana_projections.csv",
        settings=settings,
    )
    encoder = pretrain_encoder_flow([data], workdir / "encoder", settings.encoder)
    features = extract_features_flow(data, encoder["registered"], settings.encoder.batch_size)
    trained = train_flow(data, workdir / "captioner", settings.captioner, features["encoder_version"])
    evaluation = evaluate_flow(data, trained["registered"], "test", workdir / "evaluation")
    name = settings.captioner.registered_name
    promotion = promote_flow(data, name, trained["registered"].rsplit("/", 1)[1], settings.promotion, out=workdir)
    export = make_pacs_export(sample, workdir / "pacs_export", settings.sample.export_studies)
    captions = caption_flow(
        export, workdir / "captions", f"models:/{name}@{settings.promotion.alias}", settings.caption
    )
    return {
        "reports": ingest["reports"],
        "images": ingest["images"],
        "rejects": ingest["report_rejects"] + ingest["image_rejects"] + features["rejected"],
        "splits": ingest["splits"],
        "data_version": ingest["data_version"],
        "encoder": encoder["registered"],
        "encoder_val_loss": encoder["val_loss"],
        "features_encoded": features["encoded"],
        "features_already_stored": features["already_stored"],
        "captioner": trained["registered"],
        "test_BLEU-4": evaluation["BLEU-4"],
        "test_CIDEr": evaluation["CIDEr"],
        "test_clinical_micro_f1": evaluation["clinical_micro_f1"],
        "report": evaluation["report"],
        "promotion": f"{promotion['outcome']}: {promotion['reason']}",
        "captioned_images": captions["captioned_total"],
        "out_of_domain_studies": captions["out_of_domain_studies"],
        "captions": captions["captions"],
    }
