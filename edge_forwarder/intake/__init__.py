"""Edge intake: C-STORE SCP, durable spool and journal, study completion, routing, quarantine."""

from edge_forwarder.intake.scp import CompletedStudy, Intake
from edge_forwarder.intake.settings import (
    ExpectedSeriesRule,
    IntakeSettings,
    RoutingRule,
    SeriesMatch,
)

__all__ = [
    "CompletedStudy",
    "ExpectedSeriesRule",
    "Intake",
    "IntakeSettings",
    "RoutingRule",
    "SeriesMatch",
]
