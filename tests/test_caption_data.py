"""Study-level examples: view order, missing views masked, reports without features listed as rejects."""

from __future__ import annotations

import numpy as np
import pandas as pd

from radcap.captioning.data import build_caption_set
from radcap.imaging.features import FeatureStore, ImageItem, features_table


def test_views_are_ordered_masked_and_missing_features_rejected(tmp_path):
    reports = pd.DataFrame(
        {
            "report_id": ["r1", "r2", "r3"],
            "split": "train",
            "target": ["a.", "b.", "c."],
            "group_id": ["p1", "p2", "p3"],
        }
    )
    images = pd.DataFrame(
        {
            "image_id": ["r1-lat", "r1-front", "r2-only", "r3-nofeat"],
            "report_id": ["r1", "r1", "r2", "r3"],
            "view": ["lateral", "frontal", "unknown", "frontal"],
            "path": [None] * 4,  # files gone: the newest stored row of each image is used
        }
    )
    store = FeatureStore(tmp_path)
    stored = [ImageItem(i, f"/x/{i}.png", "0" * 64) for i in ("r1-lat", "r1-front", "r2-only")]
    pooled = np.arange(3, dtype=np.float32)[:, None] * np.ones((3, 1024), np.float32)
    store.write_part(
        features_table(stored, pooled, np.zeros((3, 7, 7, 1024)), "enc", "v1", np.zeros((3, 1536))), "run", 0
    )

    data = build_caption_set(reports, images, store, "v1", "train", grid=True)
    assert data.report_ids == ["r1", "r2"] and data.texts == ["a.", "b."] and data.group_ids == ["p1", "p2"]
    assert data.image_ids == [["r1-front", "r1-lat"], ["r2-only"]]  # frontal first
    assert data.pooled[0, 0, 0] == 1 and data.pooled[0, 1, 0] == 0  # r1-front is row 1, r1-lat row 0
    np.testing.assert_array_equal(data.view_mask, [[1, 1], [1, 0]])
    assert data.pooled[1, 1].sum() == 0 and data.grid.shape == (2, 2, 49, 1024)
    assert [r["item"] for r in data.rejects] == ["r3"] and "no image of this report has features" in data.rejects[0][
        "reason"
    ]
    # A split with no image (all a small clinical collection's patients fell in the others) loads as nothing,
    # not as pyarrow's "is_in" error on an untyped empty list.
    assert len(store.load("v1", [])["image_id"]) == 0 and len(store.load("v1", {})["image_id"]) == 0
