"""Postprocess Lambda: an async inference result becomes encrypted SEG + SR + FHIR for the site."""
