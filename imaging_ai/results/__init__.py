"""Results that PACS viewers and EHRs accept: DICOM SEG, TID 1500 SR and a FHIR R4 Bundle."""

from imaging_ai.results.build import ResultObjects, build_results

__all__ = ["ResultObjects", "build_results"]
