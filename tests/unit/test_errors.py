from __future__ import annotations

import json

import pytest

from bayroute.errors import ERRORS, TRANSIENT_ERROR_NAMES, NotAnImage, ThresholdNotMet, error_facts, reason_code


def _lambda_cause(error: Exception) -> str:
    """The Cause Step Functions records for a Lambda task whose handler raised ``error``."""
    return json.dumps({"errorType": type(error).__name__, "errorMessage": str(error), "stackTrace": []})


def test_a_handlers_error_carries_its_reason_and_detail_through_the_cause() -> None:
    error = ThresholdNotMet("confidence 0.61 below 0.95", confidence=0.61)
    assert reason_code("ThresholdNotMet", _lambda_cause(error)) == ("threshold_not_met", "confidence 0.61 below 0.95")


def test_the_error_name_alone_still_gives_the_reason() -> None:
    assert reason_code("NotAnImage", "not json")[0] == "not_an_image"
    assert reason_code("NotAnImage", None) == ("not_an_image", "NotAnImage")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("States.Timeout", "timeout"),
        ("States.TaskFailed", "task_failed"),
        ("Lambda.ServiceException", "function_error"),
        ("KeyError", "unexpected_error"),
    ],
)
def test_service_and_unknown_errors_map_to_stable_codes(error: str, reason: str) -> None:
    assert reason_code(error, "some cause")[0] == reason


def test_a_crash_reports_the_crash_message_as_detail() -> None:
    cause = json.dumps({"errorType": "KeyError", "errorMessage": "'etag'"})
    assert reason_code("KeyError", cause) == ("unexpected_error", "'etag'")


def test_error_messages_are_json_with_reason_and_facts() -> None:
    message = json.loads(str(NotAnImage("starts with 'driv'", size=12)))
    assert message == {"reason": "not_an_image", "detail": "starts with 'driv'", "size": 12}


def test_only_endpoint_errors_are_transient_and_every_reason_is_distinct() -> None:
    assert TRANSIENT_ERROR_NAMES == ["EndpointThrottled", "EndpointUnavailable"]
    reasons = [cls.reason for cls in ERRORS.values()]
    assert len(reasons) == len(set(reasons))


def test_error_facts_are_read_back_from_the_cause() -> None:
    error = ThresholdNotMet("below", confidence=0.61, **{"class": "bicycle"})
    assert error_facts(_lambda_cause(error)) == {"confidence": 0.61, "class": "bicycle"}
    assert error_facts("States.Timeout") == {}
    assert error_facts(None) == {}
