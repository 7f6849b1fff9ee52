"""Shared library of the imaging AI pipeline: contracts, DICOM, de-id, results, local runtime."""

__version__ = "0.1.0"
