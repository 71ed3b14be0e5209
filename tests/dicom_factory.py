"""DICOM files made in tests with pydicom from real pixels, with fake identifying attributes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

FAKE_PATIENT = {"PatientName": "Zzfake^Patient", "PatientID": "FAKE-ID-9731", "PatientBirthDate": "19010101"}


def make_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    study_uid: str | None = None,
    view_position: str | None = None,
    with_pixels: bool = True,
    transfer_syntax=ExplicitVRLittleEndian,
) -> Path:
    """Write a single-frame DICOM of `pixels` (uint8 or uint16, HxW) with fake patient attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "ACC-FAKE-1", "1"
    ds.ReferringPhysicianName, ds.PatientSex, ds.SeriesNumber, ds.InstanceNumber = "", "O", 1, 1
    if view_position:
        ds.ViewPosition = view_position
    for key, value in FAKE_PATIENT.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = pixels.tobytes()
        if transfer_syntax == JPEGBaseline8Bit:  # encode with Pillow and encapsulate: a real compressed file
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
            ds.PixelData = encapsulate([buffer.getvalue()])
            ds["PixelData"].VR = "OB"
            meta.TransferSyntaxUID = JPEGBaseline8Bit
        elif transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path
