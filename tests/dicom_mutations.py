"""Mutations of a valid DICOM file, for fuzz tests: each kind is what a broken or lying PACS export holds.

`base_dataset` is a valid single-frame DICOM made from real pixels, with fake patient values in every text
attribute a PACS fills (and in a nested sequence and a private tag), so a test can assert that none of
them reaches any output. `MUTATIONS` maps a kind to a function (rng, base bytes, base dataset) -> bytes.
"""

from __future__ import annotations

import copy
import io
import random
import struct
from collections.abc import Callable

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

# Fake patient values: distinctive strings that must never appear in an output, a log line or a reason.
PATIENT = {
    "PatientName": "Qqfuzz^Patientname",
    "PatientID": "FUZZ-PID-4471",
    "PatientBirthDate": "19020304",
    "OtherPatientIDs": "FUZZ-OTHER-8812",
    "InstitutionName": "Qqfuzz General Hospital",
    "ReferringPhysicianName": "Qqfuzz^Referrer",
    "AccessionNumber": "FUZZACC5531",
    "StudyDescription": "Qqfuzz chest of Patientname",
    "SeriesDescription": "Qqfuzz series note",
    "ImageComments": "Qqfuzz comment about the patient",
    "OperatorsName": "Qqfuzz^Operator",
}
SECRETS = [v.encode() for v in PATIENT.values()] + [b"Qqfuzz"]


def base_dataset(pixels: np.ndarray, study_uid: str, view: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("fuzz", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.ViewPosition = "CR", view
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    item = Dataset()
    item.PatientName, item.RequestedProcedureDescription = PATIENT["PatientName"], PATIENT["StudyDescription"]
    ds.RequestAttributesSequence = Sequence([item])
    ds.add_new(0x00990010, "LO", "QQFUZZ PRIVATE")
    ds.add_new(0x00991001, "LO", PATIENT["PatientID"])
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _copy(ds: FileDataset) -> FileDataset:
    return dcmread(io.BytesIO(to_bytes(ds)))


def truncate(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    return data[: rng.randrange(0, len(data))]


def flip_bytes(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 2, 8, 64])):
        out[rng.randrange(132, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def flip_header_bytes(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    """Flips inside the header (tags, VRs, lengths), where parsing breaks rather than pixels."""
    out = bytearray(data)
    end = min(len(out), 132 + 600)
    for _ in range(rng.choice([1, 3, 10])):
        out[rng.randrange(132, end)] = rng.randrange(256)
    return bytes(out)


def absurd_length(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    """An element whose 4-byte length field claims gigabytes (or an odd, off-by-a-few length)."""
    out = bytearray(data)
    positions = [
        i for i in range(132, min(len(out) - 12, 2000)) if out[i + 4 : i + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT")
    ]
    if not positions:
        return bytes(out)
    at = rng.choice(positions) + 8
    value = rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0x10000000, len(out) * 3, 1, 3])
    out[at : at + 4] = struct.pack("<I", value)
    return bytes(out)


def missing_tag(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    clone = _copy(ds)
    for keyword in rng.sample(
        [
            "Rows",
            "Columns",
            "PixelData",
            "StudyInstanceUID",
            "SOPInstanceUID",
            "BitsAllocated",
            "SamplesPerPixel",
            "PhotometricInterpretation",
            "ViewPosition",
            "PixelRepresentation",
        ],
        rng.choice([1, 2, 3]),
    ):
        if keyword in clone:
            delattr(clone, keyword)
    return to_bytes(clone)


def multi_valued(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    clone = _copy(ds)
    choice = rng.choice(["view", "uid", "window", "photometric", "rows"])
    if choice == "view":
        clone.ViewPosition = ["PA", "LL"]
    elif choice == "uid":
        clone.StudyInstanceUID = [generate_uid(), generate_uid()]
    elif choice == "window":
        clone.WindowCenter, clone.WindowWidth = [40, 400], [80, 0]
    elif choice == "photometric":
        clone.PhotometricInterpretation = ["MONOCHROME2", "RGB"]
    else:
        clone.add_new(0x00280010, "US", [64, 64])
    return to_bytes(clone)


def lying_identity(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    """A patient attribute where a UID or the view belongs (a lying export): it must not become an id."""
    clone = _copy(ds)
    target = rng.choice(["StudyInstanceUID", "SOPInstanceUID", "ViewPosition"])
    clone[target].VR = "LO"
    clone[target].value = PATIENT["PatientName"] if target != "SOPInstanceUID" else PATIENT["PatientID"]
    return to_bytes(clone)


def wrong_transfer_syntax(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    """The file meta claims a syntax the data is not in (raw pixels labelled JPEG, big endian, implicit)."""
    from pydicom.filewriter import write_file_meta_info

    group_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL, right after 'DICM'
    body = data[144 + group_length :]
    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = rng.choice(
        [JPEGBaseline8Bit, JPEG2000Lossless, RLELossless, ExplicitVRBigEndian, ImplicitVRLittleEndian, "1.2.3.4.5.999"]
    )
    buffer = io.BytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return data[:132] + buffer.getvalue() + body


def frames(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    clone = _copy(ds)
    value = rng.choice(["2", "1000000", "0", "-1", "abc", "1"])
    clone.add_new(0x00280008, "LO" if value == "abc" else "IS", value)
    return to_bytes(clone)


def sizes(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    clone = _copy(ds)
    tag = rng.choice(["Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "BitsStored"])
    clone[tag].value = rng.choice([0, 1, 3, 16, 64, 65535])
    return to_bytes(clone)


def bad_values(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    clone = _copy(ds)
    choice = rng.choice(["slope", "window", "photometric", "representation"])
    if choice == "slope":
        value = rng.choice(["abc", "0", "nan", "1e400"])  # invalid DS values are written with VR LO (a lying file)
        clone.add_new(0x00281053, "DS" if value == "0" else "LO", value)
        clone.add_new(0x00281052, "DS", "-1024")
    elif choice == "window":
        clone.add_new(0x00281050, "DS", "40")
        value = rng.choice(["0", "-5", "xyz"])
        clone.add_new(0x00281051, "LO" if value == "xyz" else "DS", value)
    elif choice == "photometric":
        clone.PhotometricInterpretation = rng.choice(["YBR_FULL", "PALETTE COLOR", "NONSENSE", ""])
    else:
        clone.PixelRepresentation = rng.choice([1, 7])
    return to_bytes(clone)


def deep_sequence(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    """Sequences nested thousands deep (raw bytes: no writer can make them), or one with thousands of items,
    spliced in before the pixels."""
    group_length = struct.unpack("<I", data[140:144])[0]
    start = 144 + group_length
    if rng.random() < 0.6:
        depth = rng.choice([100, 2000, 20000])
        opening = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        if rng.random() < 0.5:
            closing = b""  # never closed: the parser must stop at the end of the file
        return data[:start] + opening * depth + closing * depth + data[start:]
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", 10) + b"\x08\x00\x55\x11UI\x02\x001\x00"
    items = item * rng.choice([1000, 20000, 200000])
    if rng.random() < 0.5:  # defined length: a parser can skip it
        element = b"\x08\x00\x40\x11SQ\x00\x00" + struct.pack("<I", len(items)) + items
    else:  # undefined length: a parser must walk every item
        element = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" + items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return data[:start] + element + data[start:]


def empty_or_preamble_only(rng: random.Random, data: bytes, ds: FileDataset) -> bytes:
    return rng.choice([b"", data[:132], data[:128] + b"DICM" + b"\0" * rng.randrange(1, 40)])


MUTATIONS: dict[str, Callable[[random.Random, bytes, FileDataset], bytes]] = {
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    "flip_header_bytes": flip_header_bytes,
    "absurd_length": absurd_length,
    "missing_tag": missing_tag,
    "multi_valued": multi_valued,
    "lying_identity": lying_identity,
    "wrong_transfer_syntax": wrong_transfer_syntax,
    "frames": frames,
    "sizes": sizes,
    "bad_values": bad_values,
    "deep_sequence": deep_sequence,
    "empty_or_preamble_only": empty_or_preamble_only,
}
