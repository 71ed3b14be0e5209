"""Pretraining labels: IU MeSH -> ChestX-ray14 on the real reports, MedPix metadata, masks and weights."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radcap.imaging.labels import LabelSpace, image_labels, labelled_images, mesh_to_cxr14
from radcap.ingestion.manifest import parse_labels


def test_mesh_mapping_rules():
    assert mesh_to_cxr14(["normal"]) == []  # annotated, all negative
    assert mesh_to_cxr14(["No Indexing"]) is None  # not annotated
    assert mesh_to_cxr14([]) is None
    assert mesh_to_cxr14(["Pleural Effusion/right/small", "Cardiomegaly/mild"]) == ["Cardiomegaly", "Effusion"]
    assert mesh_to_cxr14(["Thickening/pleura/apex", "Thickening/bronchi"]) == ["Pleural_Thickening"]
    assert mesh_to_cxr14(["Opacity/lung/base", "Calcified Granuloma/lung"]) == []  # ambiguous terms are left out


@pytest.mark.realdata
def test_mesh_mapping_on_the_real_iu_reports(shared_data):
    reports = pd.read_csv(shared_data / "iu_xray" / "indiana_reports.csv", dtype=str, keep_default_na=False)
    counts, annotated = Counter(), 0
    for mesh in reports["MeSH"]:
        labels = mesh_to_cxr14(mesh.split(";"))
        if labels is not None:
            annotated += 1
            counts.update(labels)
    # Counts of MeSH major headings in the real collection (one per report), mapped as documented.
    assert annotated == len(reports) - (reports["MeSH"].str.strip() == "No Indexing").sum()
    assert counts["Cardiomegaly"] == 345 and counts["Atelectasis"] == 315 and counts["Effusion"] == 149
    assert counts["Emphysema"] >= 60 and counts["Hernia"] == 44 and counts["Pneumothorax"] == 22
    assert set(counts) <= {
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    }


def test_image_labels_per_dataset():
    medpix = {
        "dataset": "medpix2",
        "modality": "CT",
        "plane": "Transverse",
        "location_category": "Thorax",
        "view": "unknown",
        "labels": [],
    }
    assert image_labels(medpix, None) == ["modality:CT", "plane:axial", "region:Thorax"]
    iu = {"dataset": "iu-xray", "view": "lateral", "modality": None, "labels": []}
    assert image_labels(iu, {"mesh": ["Cardiomegaly/severe"]}) == ["cxr14:*", "cxr14:Cardiomegaly", "view:lateral"]
    manifest = {
        "dataset": "manifest",
        "view": "frontal",
        "modality": None,
        "labels": parse_labels("finding:Pneumonia; smoker"),
    }
    assert image_labels(manifest, None) == ["finding:Pneumonia", "label:smoker", "view:frontal"]


def test_label_space_masks_and_class_weights():
    frame = pd.DataFrame(
        {
            "labels": [["cxr14:Effusion", "view:frontal"], [], ["region:Head"], ["region:Chest"], ["cxr14:Effusion"]],
            "namespaces": [["cxr14", "view"], ["cxr14"], ["region"], ["region"], ["cxr14"]],
        }
    )
    space = LabelSpace.fit(frame, min_count=1)
    # 'view' has a single value: an exclusive namespace with one class teaches nothing and is dropped.
    assert space.labels == ("cxr14:Effusion", "region:Chest", "region:Head")
    targets, mask = space.encode(frame)
    np.testing.assert_array_equal(mask[:, 0], [1, 1, 0, 0, 1])  # only IU images say yes/no to effusion
    np.testing.assert_array_equal(targets[:, 0], [1, 0, 0, 0, 1])
    pos, neg = space.class_weights(targets, mask)
    assert pos[0] == pytest.approx(1 / 3) and neg[0] == pytest.approx(2 / 3)  # CheXNet: |N|/|all|, |P|/|all|


def test_labelled_images_skip_missing_files_and_unlabelled():
    images = pd.DataFrame(
        [
            {
                "image_id": "a",
                "report_id": "r",
                "dataset": "iu-xray",
                "split": "train",
                "path": "/x/a.png",
                "view": "frontal",
                "modality": None,
                "labels": [],
            },
            {
                "image_id": "b",
                "report_id": "r",
                "dataset": "iu-xray",
                "split": "train",
                "path": None,
                "view": "frontal",
                "modality": None,
                "labels": [],
            },
            {
                "image_id": "c",
                "report_id": "q",
                "dataset": "manifest",
                "split": "val",
                "path": "/x/c.png",
                "view": "unknown",
                "modality": None,
                "labels": [],
            },
        ]
    )
    reports = pd.DataFrame([{"report_id": "r", "mesh": ["normal"]}, {"report_id": "q", "mesh": []}])
    frame = labelled_images(images, reports)
    assert frame["image_id"].tolist() == ["a"]
    assert frame.iloc[0]["labels"] == ["view:frontal"] and frame.iloc[0]["namespaces"] == ["cxr14", "view"]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["train", "val", "test", "unassigned"]), st.integers(0, 30)), min_size=1, max_size=60
    ),
    fraction=st.floats(0.05, 0.45),
    select_on=st.sampled_from(["carve", "val"]),
)
def test_the_encoder_is_selected_on_a_carve_of_train_only(rows, fraction, select_on):
    """Whatever the frame: with select_on=carve the selection images are train images of whole carved groups
    (never val, test or unassigned ones); with select_on=val exactly the val images."""
    from radcap.core.settings import SplitRules
    from radcap.ingestion.splits import in_selection_carve, selection_mask

    # a group keeps one split, as ingestion guarantees
    split_of = {}
    frame = pd.DataFrame(
        [{"image_id": str(i), "group_id": f"g{g}", "split": split_of.setdefault(g, s)} for i, (s, g) in enumerate(rows)]
    )
    rules = SplitRules(select_on=select_on, select_fraction=fraction)
    chosen = pd.Series(selection_mask(frame["split"], frame["group_id"], rules))
    if select_on == "val":
        assert chosen.tolist() == (frame["split"] == "val").tolist()
    else:
        expected = (frame["split"] == "train") & frame["group_id"].map(lambda g: in_selection_carve(g, rules))
        assert chosen.tolist() == expected.tolist()
        assert set(frame.loc[chosen, "split"]) <= {"train"}
        carved_groups = set(frame.loc[chosen, "group_id"])  # whole groups: no carved group keeps a train row
        assert not (frame["group_id"].isin(carved_groups) & ~chosen & (frame["split"] == "train")).any()
