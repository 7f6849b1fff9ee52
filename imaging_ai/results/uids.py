"""Deterministic result UIDs: a redelivered run rebuilds byte-identical references."""

from __future__ import annotations

from pydicom.uid import generate_uid


def result_uid(pseudo_study_uid: str, *parts: str) -> str:
    """A UID derived from the study, the run and a role name.

    Postprocessing is at-least-once: building the same run twice must give the same UIDs,
    so a PACS sees a duplicate of one instance rather than two competing results.
    """
    return str(generate_uid(entropy_srcs=["imaging-ai-results", pseudo_study_uid, *parts]))
