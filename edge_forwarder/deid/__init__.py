"""PS3.15 Annex E de-identification of DICOM instances, driven by the shipped Table E.1-1."""

from edge_forwarder.deid.engine import (
    Deidentifier,
    DeidError,
    DeidOptions,
    DeidResult,
    PseudoIdentifiers,
    QuarantineReason,
)
from edge_forwarder.deid.table import TABLE_EDITION, Action, resolve_actions, table_rows
from imaging_ai.dicom_policy import BURNED_IN_RISK_SOP_CLASSES

__all__ = [
    "BURNED_IN_RISK_SOP_CLASSES",
    "TABLE_EDITION",
    "Action",
    "DeidError",
    "DeidOptions",
    "DeidResult",
    "Deidentifier",
    "PseudoIdentifiers",
    "QuarantineReason",
    "resolve_actions",
    "table_rows",
]
