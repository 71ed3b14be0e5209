"""The main job on the embedded default: sample -> ingest -> pretrain encoder -> features -> train -> evaluate
-> promote (gated; the first model becomes champion) -> caption a PACS-like DICOM batch with the champion."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.caption import caption_flow
from flows.evaluate import evaluate_flow
from flows.features import extract_features_flow
from flows.ingest import ingest_reports
from flows.pretrain import pretrain_encoder_flow
from flows.promote import promote_flow
from flows.train import train_flow
from radcap.settings import get_settings
from tasks.sample import make_pacs_export, make_sample


@flow(name="radcap-demo")
def demo_pipeline(workdir: Path) -> dict:
    settings = get_settings()
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
    # A smoke-run encoder, registered under its own name so it never becomes the "latest" real encoder.
    demo_encoder = settings.encoder.model_copy(
        update={
            "epochs": settings.sample.encoder_epochs,
            "pretrain_size": settings.sample.encoder_size,
            "min_label_count": 3,
            "registered_name": f"{settings.encoder.registered_name}-demo",
        }
    )
    encoder = pretrain_encoder_flow([data], workdir / "encoder", demo_encoder)
    features = extract_features_flow(data, encoder["registered"], settings.encoder.batch_size)
    captioner_cfg = settings.captioner.model_copy(
        # a few dozen studies: small batches, a higher rate and patience (val has only a handful of reports)
        update={"epochs": settings.sample.captioner_epochs, "min_count": 1, "batch_size": 16,
                "learning_rate": 2e-3, "patience": 20, "min_epochs": 20,
                "registered_name": f"{settings.captioner.registered_name}-demo"}
    )
    trained = train_flow(data, workdir / "captioner", captioner_cfg, features["encoder_version"])
    evaluation = evaluate_flow(data, trained["registered"], "test", workdir / "evaluation")
    name = captioner_cfg.registered_name
    promotion = promote_flow(data, name, trained["registered"].rsplit("/", 1)[1], out=workdir)
    export = make_pacs_export(sample, workdir / "pacs_export", settings.sample.export_studies)
    captions = caption_flow(export, workdir / "captions", f"models:/{name}@{settings.promotion.alias}")
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
        "captions": captions["captions"],
    }
