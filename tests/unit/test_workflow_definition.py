"""The one workflow definition, checked as data: every task retries transient errors and dead-letters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bayroute.config import load_settings
from bayroute.errors import TRANSIENT_ERROR_NAMES
from bayroute.local.provision import WORKFLOW_DEFINITION, DefinitionError, render_definition, workflow_substitutions

ASL: dict[str, Any] = json.loads(WORKFLOW_DEFINITION.read_text(encoding="utf-8"))
LAMBDA_TASKS = [name for name, s in ASL["States"].items() if s.get("Resource") == "arn:aws:states:::lambda:invoke"]


def test_the_workflow_is_serialize_infer_threshold() -> None:
    assert ASL["StartAt"] == "Serialize"
    assert LAMBDA_TASKS == ["Serialize", "Infer", "Threshold"]
    assert [ASL["States"][name]["Next"] for name in LAMBDA_TASKS] == ["Infer", "Threshold", "Routed"]


@pytest.mark.parametrize("task", LAMBDA_TASKS)
def test_every_task_retries_transient_errors_and_catches_everything(task: str) -> None:
    state = ASL["States"][task]
    retried = {name for rule in state["Retry"] for name in rule["ErrorEquals"]}
    assert set(TRANSIENT_ERROR_NAMES) <= retried
    assert all(rule["BackoffRate"] > 1 and rule["IntervalSeconds"] >= 1 for rule in state["Retry"])
    (catch,) = state["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"]
    failed = ASL["States"][catch["Next"]]
    assert failed["Next"] == "SendToDeadLetterQueue"


def test_dead_letter_path_sends_request_error_cause_then_announces_then_fails() -> None:
    send = ASL["States"]["SendToDeadLetterQueue"]
    body = send["Parameters"]["MessageBody"]
    assert {"request.$", "step.$", "error.$", "cause.$", "execution.$"} <= set(body)
    assert send["Next"] == "AnnounceDeadLetter"
    assert ASL["States"]["AnnounceDeadLetter"]["Next"] == "DeadLettered"
    assert ASL["States"]["DeadLettered"]["Type"] == "Fail"


def test_rendering_substitutes_every_placeholder() -> None:
    rendered = render_definition(
        WORKFLOW_DEFINITION.read_text(encoding="utf-8"),
        workflow_substitutions(load_settings(env={}), "http://queue"),
    )
    assert "${" not in rendered
    assert json.loads(rendered)["States"]["SendToDeadLetterQueue"]["Parameters"]["QueueUrl"] == "http://queue"


def test_a_missing_substitution_is_named() -> None:
    with pytest.raises(DefinitionError, match="InferFunctionArn"):
        render_definition('{"a": "${InferFunctionArn}"}', {})
