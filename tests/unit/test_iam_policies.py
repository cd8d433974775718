"""Least privilege, checked statically: every role allows what its code calls and nothing more; no wildcards
beyond the documented ones."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from infra.build_template import WORKFLOW_DEFINITION, build_template
from infra.codegraph import handler_module, module_path, reachable_code
from infra.iam import (
    AVOIDED_BY_CONFIGURATION,
    BACKENDS,
    STAR_RESOURCE_ACTIONS,
    TASK_GRANTS,
    WORKFLOW_PLATFORM_ACTIONS,
    code_actions,
    compare,
    function_role,
    policy_documents,
    role_actions,
    role_statements,
    wildcard_problems,
)

TEMPLATE: dict[str, Any] = build_template()
FUNCTIONS = ("ingest", "serialize", "infer", "threshold", "monitor", "replay")


def written(function: str) -> bool:
    return module_path(handler_module(function)) is not None


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_role_allows_what_its_code_calls_and_nothing_more(function: str) -> None:
    if not written(function):
        pytest.skip(f"services/{function}/handler.py is not written yet: its policy is checked once it is")
    comparison = compare(TEMPLATE, function)
    assert comparison.missing == frozenset(), f"{function} calls what its role does not allow"
    assert comparison.unused == {backend: frozenset() for backend in BACKENDS}, f"{function} role allows unused"


def test_the_check_notices_a_missing_and_an_unused_permission() -> None:
    template = copy.deepcopy(TEMPLATE)
    statements = template["Resources"]["InferRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    statements[:] = [s for s in statements if s.get("Sid") != "WriteCaptureRecords"]
    statements.append({"Sid": "Extra", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": ["arn:x"]})
    comparison = compare(template, "infer")
    assert comparison.missing == frozenset({"s3:PutObject"})
    assert comparison.unused == {backend: frozenset({"sqs:SendMessage"}) for backend in BACKENDS}


def test_code_actions_follow_the_code_not_whole_modules() -> None:
    """ingest shares the S3 adapter with the writers, but never reaches its put methods."""
    ingest = code_actions("ingest")
    assert "s3:PutObject" not in ingest.required
    assert {"s3:GetObject", "states:StartExecution", "sqs:SendMessage", "dynamodb:PutItem"} <= set(ingest.required)
    infer = code_actions("infer")
    assert {"sagemaker:InvokeEndpoint", "s3:PutObject"} <= set(infer.required)
    assert not any(action.startswith(("dynamodb:", "states:", "sqs:")) for action in infer.required)


def test_reachable_code_skips_methods_no_one_calls() -> None:
    code = reachable_code(handler_module("ingest"))
    reached = {getattr(node, "name", None) for _, node in code.nodes}
    assert {"head", "read_prefix", "start"} <= reached
    assert "put_bytes" not in reached and "put_json" not in reached


def test_invoke_endpoint_is_granted_only_with_the_sagemaker_backend() -> None:
    role = function_role(TEMPLATE, "infer")
    assert "sagemaker:InvokeEndpoint" in role_actions(TEMPLATE, role, "sagemaker")
    assert "sagemaker:InvokeEndpoint" not in role_actions(TEMPLATE, role, "lambda")
    (statement,) = [s for s in role_statements(TEMPLATE, role, "sagemaker") if s["Sid"] == "InvokeEndpoint"]
    assert statement["Resource"] == [{"Ref": "Endpoint"}]


def test_calls_avoided_by_configuration_really_are() -> None:
    assert set(AVOIDED_BY_CONFIGURATION) == {"states:ListStateMachines"}
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["BAYROUTE_STATE_MACHINE"]["Fn::Sub"].startswith("arn:${AWS::Partition}:states:")


def test_no_wildcard_action_and_star_resources_only_where_aws_has_no_narrower_one() -> None:
    assert wildcard_problems(policy_documents(TEMPLATE)) == []
    assert all(reason.strip() for reason in STAR_RESOURCE_ACTIONS.values())


def test_the_wildcard_check_catches_a_broad_grant() -> None:
    template = copy.deepcopy(TEMPLATE)
    statements = template["Resources"]["ThresholdRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    statements.append({"Sid": "Broad", "Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]})
    statements.append({"Sid": "Unscoped", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": "*"})
    problems = wildcard_problems(policy_documents(template))
    assert any("Broad" in problem and "wildcard actions" in problem for problem in problems)
    assert any("Unscoped" in problem and "Resource '*'" in problem for problem in problems)


def test_every_star_resource_statement_says_why_in_its_sid() -> None:
    for document in policy_documents(TEMPLATE):
        if document.kind != "identity":
            continue
        for statement in document.statements:
            if "*" in statement["Resource"]:
                assert "NoResourceLevelPermissions" in statement["Sid"], (document.resource, statement["Sid"])


def test_workflow_role_allows_exactly_its_tasks_plus_logging_and_tracing() -> None:
    states = json.loads(WORKFLOW_DEFINITION.read_text(encoding="utf-8"))["States"]
    tasks = {state["Resource"] for state in states.values() if state["Type"] == "Task"}
    needed = {TASK_GRANTS[resource] for resource in tasks} | WORKFLOW_PLATFORM_ACTIONS
    for backend in BACKENDS:
        assert role_actions(TEMPLATE, "WorkflowRole", backend) == needed
    (invoke,) = [s for s in role_statements(TEMPLATE, "WorkflowRole", "lambda") if s["Sid"] == "InvokeTheThreeSteps"]
    assert invoke["Resource"] == [
        {"Fn::GetAtt": [f"{step}Function", "Arn"]} for step in ("Serialize", "Infer", "Threshold")
    ]


def test_events_may_only_carry_bayroutes_source() -> None:
    for role in ("IngestRole", "ThresholdRole", "WorkflowRole"):
        (statement,) = [s for s in role_statements(TEMPLATE, role, "lambda") if "events:PutEvents" in s["Action"]]
        assert statement["Condition"] == {"StringEquals": {"events:source": ["bayroute"]}}
