"""The rule-based finding labeler on sentences taken from real IU X-Ray reports, and against MeSH."""

from __future__ import annotations

import numpy as np
import pytest

from radcap.text.labeler import NEGATIVE, POSITIVE, UNCERTAIN, BinaryLabels, label_text


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "No focal consolidation, pneumothorax, or pleural effusion.",
            {"Consolidation": NEGATIVE, "Pneumothorax": NEGATIVE, "Pleural Effusion": NEGATIVE, "No Finding": POSITIVE},
        ),
        ("Heart size is normal. The lungs are clear.", {"Cardiomegaly": NEGATIVE, "Lung Opacity": NEGATIVE}),
        (
            "Mild cardiomegaly. Small left pleural effusion.",
            {"Cardiomegaly": POSITIVE, "Pleural Effusion": POSITIVE, "No Finding": NEGATIVE},
        ),
        (
            "Left basilar patchy opacities, which may represent atelectasis or infection.",
            {"Lung Opacity": POSITIVE, "Atelectasis": UNCERTAIN, "Pneumonia": UNCERTAIN},
        ),
        ("Pneumonia cannot be excluded.", {"Pneumonia": UNCERTAIN}),
        ("The previously seen pneumothorax has resolved.", {"Pneumothorax": NEGATIVE}),
        (
            "There is no pneumothorax but there is a small right effusion.",
            {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE},
        ),
        ("Midline sternotomy wires and a left-sided pacemaker.", {"Support Devices": POSITIVE, "No Finding": POSITIVE}),
        ("Healed right 6th rib fracture.", {"Fracture": POSITIVE}),
        ("Borderline cardiomegaly.", {"Cardiomegaly": UNCERTAIN}),
        ("", {"No Finding": POSITIVE, "Cardiomegaly": None}),
    ],
)
def test_labels_of_real_report_sentences(text, expected):
    labels = label_text(text)
    for observation, value in expected.items():
        assert labels[observation] == value, (observation, labels)


def test_positive_wins_over_negative_across_sentences():
    assert label_text("No effusion on the left. Small right pleural effusion.")["Pleural Effusion"] == POSITIVE


def test_binary_labels_treat_uncertain_as_configured():
    text = "Pneumonia cannot be excluded."
    assert BinaryLabels(uncertain_as=1.0)(text)["Pneumonia"] == 1
    assert BinaryLabels(uncertain_as=0.0)(text)["Pneumonia"] == 0


@pytest.mark.realdata
def test_agreement_with_iu_mesh_terms(shared_data):
    """MeSH major terms are a second, independent annotation of the same reports: the labeler must agree."""
    import pandas as pd

    reports = pd.read_csv(shared_data / "iu_xray" / "indiana_reports.csv", dtype=str, keep_default_na=False)
    reports = reports[reports["MeSH"].str.strip() != "No Indexing"]
    heads = [{term.split("/")[0].strip() for term in mesh.split(";")} for mesh in reports["MeSH"]]
    labels = [BinaryLabels(uncertain_as=0.0)(f"{f} {i}") for f, i in zip(reports["findings"], reports["impression"])]
    mesh_terms = {
        "Cardiomegaly": {"Cardiomegaly"},
        "Pleural Effusion": {"Pleural Effusion"},
        "Pneumothorax": {"Pneumothorax"},
        "Atelectasis": {"Pulmonary Atelectasis"},
    }
    for observation, terms in mesh_terms.items():
        truth = np.array([bool(h & terms) for h in heads])
        predicted = np.array([label[observation] == 1 for label in labels])
        precision = (truth & predicted).sum() / predicted.sum()
        recall = (truth & predicted).sum() / truth.sum()
        assert 2 * precision * recall / (precision + recall) > 0.8, observation
