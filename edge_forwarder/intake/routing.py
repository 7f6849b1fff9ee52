"""Routing and expected-series rules evaluated on the series of a spooled study."""

from __future__ import annotations

import re

from edge_forwarder.intake.journal import SeriesSummary
from edge_forwarder.intake.settings import RoutingRule, SeriesMatch
from imaging_ai.contracts import Priority

# Where an ordering system says a study is urgent. (0040,1003) Requested Procedure Priority
# (defined terms STAT, HIGH, ROUTINE, MEDIUM, LOW) is the one modalities copy from the
# worklist into the image header; only STAT counts (HIGH is not STAT). Read at the top level
# only: the intake's header walk skips sequences, and the Request Attributes Sequence does not
# define a priority. The retired (0032,000C) Study Priority ID has no STAT term, and the DIMSE
# C-STORE Priority is set by the sending software, not by the order: neither is read.
PRIORITY_ATTRIBUTE = "RequestedProcedurePriority"
STAT_VALUE = "STAT"

# Attributes kept per instance for rules; more come from the `tags` of configured rules.
BASE_ATTRIBUTES = (
    "Modality",
    "SOPClassUID",
    "BodyPartExamined",
    "SeriesDescription",
    PRIORITY_ATTRIBUTE,
)


def rule_attributes(rules: list[SeriesMatch]) -> tuple[str, ...]:
    extra = sorted({keyword for rule in rules for keyword in rule.tags})
    return BASE_ATTRIBUTES + tuple(k for k in extra if k not in BASE_ATTRIBUTES)


def series_matches(rule: SeriesMatch, series: SeriesSummary) -> bool:
    attrs = series.attrs
    if series.count < rule.min_instances:
        return False
    if rule.modality is not None and attrs.get("Modality", "").upper() not in {
        m.upper() for m in rule.modality
    }:
        return False
    if rule.sop_class_uids is not None and attrs.get("SOPClassUID", "") not in rule.sop_class_uids:
        return False
    if rule.body_part is not None and attrs.get("BodyPartExamined", "").upper() not in {
        b.upper() for b in rule.body_part
    }:
        return False
    if rule.series_description is not None and not re.search(
        rule.series_description, attrs.get("SeriesDescription", ""), re.IGNORECASE
    ):
        return False
    return all(
        re.search(pattern, attrs.get(keyword, ""), re.IGNORECASE)
        for keyword, pattern in rule.tags.items()
    )


def choose_models(rules: list[RoutingRule], series: list[SeriesSummary]) -> list[tuple[int, str]]:
    """Every model named by a rule that at least one series matches, as (rule index, model
    name), in rule order; a model named by several matching rules is taken once."""
    chosen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if any(series_matches(rule, s) for s in series):
            for model in rule.models:
                chosen.setdefault(model, index)
    return [(index, model) for model, index in chosen.items()]


def study_priority(matched: list[RoutingRule], series: list[SeriesSummary]) -> Priority:
    """STAT when a rule the study matched says so or any series' order says STAT; else
    ROUTINE. One priority for the study: every run of its upload shares it."""
    if any(rule.priority is Priority.STAT for rule in matched):
        return Priority.STAT
    ordered_stat = any(
        s.attrs.get(PRIORITY_ATTRIBUTE, "").strip().upper() == STAT_VALUE for s in series
    )
    return Priority.STAT if ordered_stat else Priority.ROUTINE
