"""Validate a model on the site's own annotated studies, on-prem: the report holds identifiers."""
