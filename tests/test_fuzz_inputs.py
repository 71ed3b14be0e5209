"""Property-based and mutation tests of every parser of outside input: DICOM, PNG/JPEG, Open-i XML, MedPix
JSONL and manifests. Whatever the bytes, a parser returns rows or rejects with a reason: no exception
escapes, nothing is lost, and no patient value of a DICOM header reaches a reason."""

from __future__ import annotations

import io
import json
import random
from functools import lru_cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from radcap.imaging.decode import ImageRejected, decode
from radcap.pacs.exports import Identifiers, InputImage, Reject, describe
from tests.conftest import SHARED_DATA, missing
from tests.dicom_mutations import MUTATIONS, SECRETS, base_dataset, to_bytes

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@lru_cache(maxsize=1)
def real_pixels() -> np.ndarray:
    files = sorted((SHARED_DATA / "covid_cxr" / "images").glob("*.png"))
    if not files:
        missing(f"real data not found at {SHARED_DATA} (set RADCAP_SHARED_DATA)")
    return np.asarray(Image.open(files[0]).convert("L").resize((64, 64)))


@lru_cache(maxsize=1)
def valid_dicom() -> tuple[bytes, object]:
    from pydicom.uid import generate_uid

    ds = base_dataset(real_pixels(), generate_uid(), "PA")
    return to_bytes(ds), ds


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text.encode(), (secret, text)


@FUZZ
@given(kind=st.sampled_from(sorted(MUTATIONS)), rng=st.randoms(use_true_random=False))
def test_any_mutated_dicom_is_an_image_or_a_reject_without_patient_values(tmp_path_factory, kind, rng):
    data, ds = valid_dicom()
    mutated = MUTATIONS[kind](random.Random(rng.random()), data, ds)
    folder = tmp_path_factory.mktemp("dicom", numbered=True)
    path = folder / "IM0001"
    path.write_bytes(mutated)
    described = describe(path, folder, Identifiers())
    assert isinstance(described, (InputImage, Reject))
    if isinstance(described, InputImage):  # ids are UIDs or content hashes, never a lying header's text
        assert all(c in "0123456789." for c in described.study_id) or len(described.study_id) == 32
        _no_secret(repr(described))
    else:
        _no_secret(described.reason)
    try:
        image = decode(mutated)
        assert image.pixels.dtype == np.float32 and np.isfinite(image.pixels).all()
        assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    except ImageRejected as exc:
        assert str(exc) and exc.sha256 in ("", __import__("hashlib").sha256(mutated).hexdigest())
        _no_secret(str(exc))


def _raster(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(real_pixels()).save(buffer, format=kind)
    return buffer.getvalue()


@FUZZ
@given(
    kind=st.sampled_from(["PNG", "JPEG"]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=12),
    huge=st.booleans(),
)
def test_any_mutated_png_or_jpeg_is_decoded_or_rejected(kind, cut, flips, huge):
    data = bytearray(_raster(kind))
    if huge and kind == "PNG":  # IHDR claims a 100000 x 100000 image: rejected before decoding
        data[16:24] = (100000).to_bytes(4, "big") * 2
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = bytes(data[: max(1, int(cut * len(data)))]) if cut < 0.98 else bytes(data)
    try:
        image = decode(data)
        assert np.isfinite(image.pixels).all() and image.pixels.ndim == 2
    except ImageRejected as exc:
        assert str(exc)


# ---------------------------------------------------------------- report sources


def _iu_report(uid: str, images: int) -> str:
    parents = "".join(f'<parentImage id="{uid}_IM-0001-{1000 + k}"/>' for k in range(images))
    return (
        f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{uid}"/><MedlineCitation><Article><Abstract>'
        f'<AbstractText Label="FINDINGS">Heart size normal.</AbstractText>'
        f'<AbstractText Label="IMPRESSION">No acute disease.</AbstractText></Abstract></Article></MedlineCitation>'
        f"<MeSH><major>normal</major></MeSH>{parents}</eCitation>"
    )


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    files=st.lists(
        st.tuples(
            st.integers(1, 6),
            st.integers(0, 3),
            st.sampled_from(["keep", "cut", "flip", "insert"]),
            st.floats(0, 1),
            st.binary(max_size=20),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_mutated_open_i_folders_account_for_every_file_and_image(tmp_path_factory, files):
    from radcap.core.settings import TextRules
    from radcap.ingestion.iu import read_iu_xml
    from radcap.tasks.ingest import build_tables

    folder = tmp_path_factory.mktemp("xml", numbered=True)
    for n, (uid, images, how, where, blob) in enumerate(files):
        data = _iu_report(f"CXR{uid}", images).encode()  # repeated uids: duplicates
        at = int(where * len(data))
        data = {
            "keep": data,
            "cut": data[:at],
            "flip": data[:at] + bytes([data[at % len(data)] ^ 0x5A]) + data[at + 1 :],
            "insert": data[:at] + blob + data[at:],
        }[how]
        (folder / f"{n}.xml").write_bytes(data)
    parsed = read_iu_xml(folder, TextRules())
    tables = build_tables.fn(parsed)  # raises when rows + rejects != inputs, for reports or images
    assert parsed.inputs == len(files)
    assert tables["reports"].num_rows + sum(r["kind"] == "report" for r in parsed.rejects) == len(files)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "image": st.sampled_from(
                    ["img/a.png", "img/b.png", "img/c.png", "", "img/../x.png", "img/d.png", "img/e.jpg"]
                ),
                "caption": st.sampled_from(["Left effusion.", "Normal.", "", "  ", "None.", "n/a", "Nodule 2.5 cm."]),
                "study_id": st.sampled_from(["s1", "s2", "s3", ""]),
                "patient_id": st.sampled_from(["p1", "p2", ""]),
                "split": st.sampled_from(["train", "val", "dev", "test", "holdout", ""]),
                "view": st.sampled_from(["PA", "frontal", "lateral", ""]),
            }
        ),
        min_size=1,
        max_size=25,
    ),
    column=st.sampled_from(["image", "image_path", "path", "file", "filename"]),
)
def test_any_manifest_accounts_for_every_row_once(tmp_path_factory, rows, column):
    import pandas as pd

    from radcap.core.settings import TextRules
    from radcap.ingestion.manifest import read_manifest
    from radcap.ingestion.splits import enforce_no_leakage
    from tests.test_manifest import assert_every_row_accounted_once

    folder = tmp_path_factory.mktemp("manifest", numbered=True)
    path = folder / "m.csv"
    pd.DataFrame(rows).rename(columns={"image": column}).to_csv(path, index=False)
    parsed = read_manifest(path, TextRules())
    enforce_no_leakage(parsed)
    assert_every_row_accounted_once(parsed, len(rows))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    lines=st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "image": st.sampled_from(["i1", "i2", "i3", "", 7]),
                    "U_id": st.sampled_from(["c1", "c2", None, 3]),
                    "Type": st.sampled_from(["CT", "MR", None, 1, ["CT"]]),
                    "Description": st.one_of(
                        st.none(),
                        st.text(max_size=5),
                        st.fixed_dictionaries(
                            {
                                "Caption": st.one_of(st.sampled_from(["A mass.", "", None]), st.integers()),
                                "Plane": st.sampled_from(["Axial", None, 3]),
                            }
                        ),
                    ),
                }
            ).map(json.dumps),
            st.sampled_from(["", "{", "[1, 2]", "null", '"text"', '{"image": ']),
            st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_any_medpix_file_accounts_for_every_line(tmp_path_factory, lines):
    from radcap.core.settings import TextRules
    from radcap.ingestion.medpix import read_medpix
    from radcap.tasks.ingest import build_tables

    folder = tmp_path_factory.mktemp("medpix", numbered=True)
    (folder / "descriptions_train.jsonl").write_text(
        "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines), encoding="latin-1"
    )
    parsed = read_medpix(folder, TextRules())
    build_tables.fn(parsed)  # raises when rows + rejects != inputs
    counted = sum(1 for raw in (folder / "descriptions_train.jsonl").read_bytes().splitlines() if raw.strip())
    assert parsed.inputs == counted
