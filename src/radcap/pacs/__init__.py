"""The hospital's image archive as an input: PACS exports (DICOM folders) found and grouped into studies."""
