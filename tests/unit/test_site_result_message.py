"""SiteResultMessage is untrusted input at the edge: each field is checked, as a ValidationError."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from imaging_ai.contracts import SiteResultMessage, result_key

SITE, STUDY, RUN = "site-a", "2.25.42", "r1-abc"


def _ready(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "RESULT_READY",
        "site": SITE,
        "pseudo_study_uid": STUDY,
        "run_id": RUN,
        "result_keys": {"sr.dcm": result_key(SITE, STUDY, RUN, "sr.dcm")},
    }
    body.update(changes)
    return body


def test_a_well_formed_message_parses() -> None:
    assert SiteResultMessage.model_validate(_ready()).run_id == RUN


@pytest.mark.parametrize(
    ("attack", "changes", "field"),
    [
        ("path traversal in run_id", {"run_id": "../../etc"}, "run_id"),
        ("slash in run_id", {"run_id": "r1/../../x"}, "run_id"),
        ("over-long run_id", {"run_id": "r" * 65}, "run_id"),
        ("study that is not a UID", {"pseudo_study_uid": "../1.2"}, "pseudo_study_uid"),
        ("site with a slash", {"site": "site-a/../b"}, "site"),
        ("unknown object name", {"result_keys": {"../x": "results/site-a/2.25.42/r1-abc/x"}}, ""),
        (
            "another study's key",
            {"result_keys": {"sr.dcm": result_key(SITE, "2.25.43", RUN, "sr.dcm")}},
            "",
        ),
        ("ready with nothing", {"result_keys": {}}, ""),
        (
            "control characters in reason",
            {"kind": "FAILED", "result_keys": {}, "reason": "a\x1b[2Jb"},
            "reason",
        ),
        ("model name as a path", {"model_name": "../model"}, "model_name"),
        ("unknown field", {"callback_url": "http://x"}, "callback_url"),
    ],
)
def test_each_bad_field_is_a_validation_error_naming_it(
    attack: str, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        SiteResultMessage.model_validate(_ready(**changes))
    locations = {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()}
    assert field in locations if field else locations <= {""}
