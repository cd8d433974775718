"""The local stack's contract with moto: fails loudly if a moto upgrade breaks what the runtime relies on.

Trivial handlers stand in for the real ones, so that what is tested here is only the plumbing: S3 →
EventBridge → SQS → dispatcher → ingest; the real ASL run by moto's interpreter, reaching the handlers
through our Lambda Invoke API; named errors becoming ASL error names; Catch → SQS DLQ message and the
ObjectDeadLettered event; and the environment restored on stop. Each runs against both shapes of the stack:
two processes (the default: moto's storage and messaging services in a process of their own) and one.
"""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest

from bayroute.config import load_settings
from bayroute.domain import ObjectRef, WorkflowRequest
from bayroute.errors import ThresholdNotMet, reason_code
from bayroute.local.stack import LocalStack

SETTINGS = load_settings(env={})
NAMES = SETTINGS.names


def _ingest(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    machine = sfn.list_state_machines()["stateMachines"][0]["stateMachineArn"]
    for record in event["Records"]:
        detail = json.loads(record["body"])["detail"]
        obj = detail["object"]
        ref = ObjectRef(detail["bucket"]["name"], obj["key"], obj.get("etag") or obj["eTag"], obj["size"])
        sfn.start_execution(
            stateMachineArn=machine, name=ref.execution_name(), input=json.dumps(WorkflowRequest(ref).to_dict())
        )
    return {"batchItemFailures": []}


def _serialize(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    return {"image": {"key": event["request"]["key"]}, "input_stats": {"bytes": event["request"]["size"]}}


def _infer(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    return {
        "labels": ["bicycle", "motorcycle"],
        "probabilities": [0.99, 0.01],
        "model_version": "test",
        "inference_id": "i-1",
        "top_class": "bicycle",
        "confidence": 0.99,
    }


def _threshold(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    if event["request"]["key"].startswith("low"):
        raise ThresholdNotMet("below the threshold", confidence=0.6)
    return {"status": "routed", "object_key": event["request"]["key"], "seen": sorted(event)}


@pytest.fixture(scope="module", params=[True, False], ids=["two-processes", "one-process"])
def stack(request: pytest.FixtureRequest) -> Any:
    handlers = {
        NAMES.ingest_function: _ingest,
        NAMES.serialize_function: _serialize,
        NAMES.infer_function: _infer,
        NAMES.threshold_function: _threshold,
    }
    with LocalStack(SETTINGS, handlers=handlers, start_model_endpoint=False, aws_process=request.param) as running:
        yield running


def _execution(stack: LocalStack, key: str, timeout: float = 30.0) -> dict[str, Any]:
    sfn = stack.client("stepfunctions")
    assert stack.resources is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in sfn.list_executions(stateMachineArn=stack.resources.state_machine_arn)["executions"]:
            described = sfn.describe_execution(executionArn=item["executionArn"])
            if json.loads(described["input"])["request"]["key"] == key and described["status"] != "RUNNING":
                return dict(described)
        time.sleep(0.1)
    raise AssertionError(f"no finished execution for {key} within {timeout} s")


def test_an_inbox_object_runs_the_real_workflow_through_the_local_lambda_api(stack: LocalStack) -> None:
    stack.client("s3").put_object(Bucket=NAMES.inbox_bucket, Key="good one.png", Body=b"image bytes")

    execution = _execution(stack, "good one.png")

    assert execution["status"] == "SUCCEEDED"
    output = json.loads(execution["output"])
    assert output["object_key"] == "good one.png"
    assert output["seen"] == ["prediction", "request"]  # the ASL passes exactly what the threshold step needs
    assert stack.functions[NAMES.serialize_function].invocations >= 1


def test_a_named_error_reaches_the_dead_letter_queue_and_the_outcome_event(stack: LocalStack) -> None:
    assert stack.resources is not None
    sqs = stack.client("sqs")
    stack.client("s3").put_object(Bucket=NAMES.inbox_bucket, Key="low-confidence.png", Body=b"image")

    execution = _execution(stack, "low-confidence.png")
    assert execution["status"] == "FAILED"
    assert execution["error"] == "DeadLettered"

    dead_letters = [
        json.loads(m["Body"])
        for m in sqs.receive_message(
            QueueUrl=stack.resources.dead_letter_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=2
        ).get("Messages", [])
    ]
    entry = next(d for d in dead_letters if d["request"]["key"] == "low-confidence.png")
    assert entry["error"] == "ThresholdNotMet"  # the bare class name is the ASL error name
    assert entry["step"] == "threshold"
    assert reason_code(entry["error"], entry["cause"]) == ("threshold_not_met", "below the threshold")
    assert entry["execution"] == execution["executionArn"]

    deadline = time.monotonic() + 10
    announced: list[dict[str, Any]] = []
    while not announced and time.monotonic() < deadline:
        for message in sqs.receive_message(
            QueueUrl=stack.resources.outcomes_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", []):
            event = json.loads(message["Body"])
            if event["detail"]["request"]["key"] == "low-confidence.png":
                announced.append(event)
    assert announced, "no ObjectDeadLettered event reached the outcomes queue"
    assert announced[0]["detail-type"] == SETTINGS.events.dead_lettered_detail_type
    assert announced[0]["detail"]["error"] == "ThresholdNotMet"


def test_object_tags_events_do_not_reach_ingest(stack: LocalStack) -> None:
    before = stack.functions[NAMES.ingest_function].invocations
    stack.client("s3").put_object_tagging(
        Bucket=NAMES.inbox_bucket, Key="good one.png", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}
    )
    time.sleep(1.5)
    assert stack.functions[NAMES.ingest_function].invocations == before
