"""Signed clinical reports in: HL7 v2 ORU^R01 (hl7apy), FHIR DiagnosticReport (fhir.resources) and DICOM SR
(pydicom), each parsed into the same `SignedReport`, then paired with their study's images (`pairing`)."""
