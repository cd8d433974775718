"""Static IAM checks of the template against the code: each role allows what its code calls, and no more.

For every function, :func:`code_actions` reads the AWS calls its handler can reach (``infra.codegraph``):
clients made with a literal service name (``aws_client("s3")``, ``boto3.client("sagemaker-runtime")``), then
every ``.method(...)`` call and ``get_paginator("...")`` in that code whose name is an operation of one of
those services (botocore's own service models), plus the calls libraries make for it (Powertools
idempotency). Each operation maps to the IAM actions it needs (``OPERATION_GRANTS``). The role's
statements, with the ``InferenceBackend`` conditions resolved (:func:`role_actions`), must allow every
required action, and allow nothing that neither the code nor the Lambda platform
(:data:`PLATFORM_GRANTS`) uses.

The rest of the module holds what the tests check about every policy document of the template: no
wildcard action in any Allow; ``Resource: "*"`` only for actions that have no resource-level permissions
(:data:`STAR_RESOURCE_ACTIONS`, each with the reason).

``python -m infra.iam`` prints the comparison for every function.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import botocore.session
from botocore import xform_name

from infra.codegraph import ReachableCode, handler_module, reachable_code

BACKENDS = ("lambda", "sagemaker")

# boto3 service name -> IAM action prefix.
IAM_PREFIX = {
    "s3": "s3",
    "sqs": "sqs",
    "sns": "sns",
    "events": "events",
    "stepfunctions": "states",
    "dynamodb": "dynamodb",
    "sagemaker-runtime": "sagemaker",
    "cloudwatch": "cloudwatch",
    "lambda": "lambda",
}


@dataclass(frozen=True)
class Grant:
    """What one API operation needs: ``required`` actions, and ``optional`` ones a policy may add for it."""

    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    reason: str = ""


# Operations whose IAM actions are not simply "<prefix>:<OperationName>".
OPERATION_GRANTS: dict[tuple[str, str], Grant] = {
    ("s3", "GetObject"): Grant(
        frozenset({"s3:GetObject"}),
        frozenset({"s3:GetObjectVersion", "s3:ListBucket"}),
        "a GET with VersionId needs GetObjectVersion; without ListBucket S3 answers 403 instead of 404 for a "
        "missing key, and the adapters turn only 404 into ObjectMissing",
    ),
    ("s3", "HeadObject"): Grant(
        frozenset({"s3:GetObject"}),
        frozenset({"s3:GetObjectVersion", "s3:ListBucket"}),
        "HEAD is authorised as GetObject (GetObjectVersion with VersionId); ListBucket as for GetObject",
    ),
    ("s3", "ListObjectsV2"): Grant(frozenset({"s3:ListBucket"}), reason="ListObjectsV2 is authorised as ListBucket"),
    # SQS authorises its batch operations as the single-message actions.
    ("sqs", "ChangeMessageVisibilityBatch"): Grant(frozenset({"sqs:ChangeMessageVisibility"})),
    ("sqs", "DeleteMessageBatch"): Grant(frozenset({"sqs:DeleteMessage"})),
    ("sqs", "SendMessageBatch"): Grant(frozenset({"sqs:SendMessage"})),
    ("sns", "Publish"): Grant(
        frozenset({"sns:Publish", "kms:GenerateDataKey", "kms:Decrypt"}),
        reason="the on-call topic is KMS-encrypted: a publisher needs the key",
    ),
}

# Calls that libraries make with the function's role, keyed by the library name the code refers to.
LIBRARY_GRANTS: dict[tuple[str, str], Grant] = {
    ("aws_lambda_powertools.utilities.idempotency", "DynamoDBPersistenceLayer"): Grant(
        frozenset({"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}),
        reason="Powertools idempotency persistence calls get_item, put_item, update_item and delete_item",
    ),
}

# Calls in the code that the deployed configuration never makes, and why (the tests check the why).
AVOIDED_BY_CONFIGURATION: dict[str, str] = {
    "states:ListStateMachines": (
        "WorkflowStarter lists state machines only to resolve a name; the template sets BAYROUTE_STATE_MACHINE "
        "to the state machine's ARN"
    ),
}

# What the Lambda service does with every function's role, whatever the code.
PLATFORM_GRANTS: dict[str, Grant] = {
    "logs": Grant(
        frozenset({"logs:CreateLogStream", "logs:PutLogEvents"}),
        reason="the runtime writes the function's logs to its own log group",
    ),
    "tracing": Grant(
        frozenset({"xray:PutTraceSegments", "xray:PutTelemetryRecords"}),
        reason="Tracing: Active sends segments to X-Ray",
    ),
    "sqs-event-source": Grant(
        frozenset({"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}),
        reason="an SQS event source mapping polls and deletes with the function's role",
    ),
}

# Actions that AWS authorises only with Resource "*" (no resource-level permissions), with the reason.
STAR_RESOURCE_ACTIONS: dict[str, str] = {
    "xray:PutTraceSegments": "X-Ray has no resource-level permissions",
    "xray:PutTelemetryRecords": "X-Ray has no resource-level permissions",
    "xray:GetSamplingRules": "X-Ray has no resource-level permissions",
    "xray:GetSamplingTargets": "X-Ray has no resource-level permissions",
    "cloudwatch:PutMetricData": "no resource-level permissions; the statement is limited by cloudwatch:namespace",
    "ecr:GetAuthorizationToken": "a registry token is account-wide; image pulls are limited to one repository",
    "logs:CreateLogDelivery": "Step Functions log delivery: CloudWatch Logs vended-log actions take no resource",
    "logs:GetLogDelivery": "Step Functions log delivery: CloudWatch Logs vended-log actions take no resource",
    "logs:UpdateLogDelivery": "Step Functions log delivery: CloudWatch Logs vended-log actions take no resource",
    "logs:DeleteLogDelivery": "Step Functions log delivery: CloudWatch Logs vended-log actions take no resource",
    "logs:ListLogDeliveries": "Step Functions log delivery: CloudWatch Logs vended-log actions take no resource",
    "logs:PutResourcePolicy": "Step Functions log delivery sets the log group's resource policy (account-wide)",
    "logs:DescribeResourcePolicies": "Step Functions log delivery reads the account's log resource policies",
    "logs:DescribeLogGroups": "Step Functions log delivery lists log groups (no resource-level permission)",
}

# What a state machine task resource needs from the workflow's role.
TASK_GRANTS: dict[str, str] = {
    "arn:aws:states:::lambda:invoke": "lambda:InvokeFunction",
    "arn:aws:states:::sqs:sendMessage": "sqs:SendMessage",
    "arn:aws:states:::events:putEvents": "events:PutEvents",
}
WORKFLOW_PLATFORM_ACTIONS = frozenset(
    {action for action in STAR_RESOURCE_ACTIONS if action.startswith(("logs:", "xray:"))}
)


# -- the code's side -----------------------------------------------------------------------------------------


@cache
def operations(service: str) -> dict[str, str]:
    """``{python method name: API operation name}`` of a boto3 client for ``service``."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(name): name for name in model.operation_names}


@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    where: str  # module:line


@dataclass
class CodeActions:
    """What a function's code needs: required actions, optional companions, and the evidence."""

    required: dict[str, list[str]] = field(default_factory=dict)  # action -> where it comes from
    optional: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    services: set[str] = field(default_factory=set)

    def add(self, grant: Grant, evidence: str) -> None:
        for action in grant.required:
            self.required.setdefault(action, []).append(evidence)
        self.optional |= grant.optional


def _literal_service(call: ast.Call) -> str | None:
    """``aws_client("s3")``, ``boto3.client("s3", ...)``, ``session.client(service_name="s3")``."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in {"client", "aws_client"}:
        return None
    argument: ast.expr | None = call.args[0] if call.args else None
    for keyword in call.keywords:
        if keyword.arg in {"service_name", "service"}:
            argument = keyword.value
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return argument.value
    return None


def _method_calls(code: ReachableCode) -> Iterator[tuple[str, str]]:
    """(method name, where) of every ``x.method(...)`` call; paginators and waiters by their operation."""
    for module, node in code.walk():
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        where = f"{module.name}:{node.lineno}"
        method = node.func.attr
        if method in {"get_paginator", "get_waiter"} and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                yield argument.value, where
            continue
        yield method, where


@cache
def code_actions(function: str) -> CodeActions:
    """The IAM actions the code of ``services/<function>/handler.py`` can need (cached: read-only)."""
    code = reachable_code(handler_module(function))
    result = CodeActions()
    for module, node in code.walk():
        if isinstance(node, ast.Call):
            service = _literal_service(node)
            if service is not None:
                if service not in IAM_PREFIX:
                    raise ValueError(f"{module.name}:{node.lineno} makes a {service!r} client; add it to IAM_PREFIX")
                result.services.add(service)
    for method, where in _method_calls(code):
        for service in sorted(result.services):
            operation = operations(service).get(method)
            if operation is None:
                continue
            result.calls.append(Call(service, operation, where))
            grant = OPERATION_GRANTS.get((service, operation)) or Grant(
                frozenset({f"{IAM_PREFIX[service]}:{operation}"})
            )
            result.add(grant, f"{where} {method}")
    for reference in sorted(code.external_references):
        library_grant = LIBRARY_GRANTS.get(reference)
        if library_grant is not None:
            result.add(library_grant, f"{reference[0]}.{reference[1]}")
    return result


# -- the template's side -------------------------------------------------------------------------------------


def resolve_conditions(value: Any, conditions: Mapping[str, bool]) -> Any:
    """``value`` with every ``Fn::If`` decided by ``conditions`` and ``AWS::NoValue`` removed."""
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            name, when_true, when_false = value["Fn::If"]
            return resolve_conditions(when_true if conditions[name] else when_false, conditions)
        resolved = {key: resolve_conditions(inner, conditions) for key, inner in value.items()}
        return {key: inner for key, inner in resolved.items() if inner != _NO_VALUE}
    if isinstance(value, list):
        items = [resolve_conditions(item, conditions) for item in value]
        return [item for item in items if item != _NO_VALUE]
    return value


_NO_VALUE = {"Ref": "AWS::NoValue"}


def backend_conditions(backend: str) -> dict[str, bool]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return {"UseSageMaker": backend == "sagemaker", "HasOnCallEmail": True}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(template: Mapping[str, Any], role: str, backend: str) -> list[dict[str, Any]]:
    properties = template["Resources"][role]["Properties"]
    statements: list[dict[str, Any]] = []
    for policy in properties.get("Policies", []):
        document = resolve_conditions(policy["PolicyDocument"], backend_conditions(backend))
        statements.extend(as_list(document["Statement"]))
    return statements


def role_actions(template: Mapping[str, Any], role: str, backend: str) -> set[str]:
    return {
        action
        for statement in role_statements(template, role, backend)
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
    }


def function_role(template: Mapping[str, Any], function: str) -> str:
    """The logical id of the role of the function whose handler is ``services/<function>/handler.handler``."""
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function" and properties.get("Handler") == (
            f"services/{function}/handler.handler"
        ):
            return str(properties["Role"]["Fn::GetAtt"][0])
    raise KeyError(f"the template has no function with handler services/{function}/handler.handler")


def platform_actions(template: Mapping[str, Any], function: str) -> set[str]:
    """What the Lambda service uses the function's role for: logs, tracing, its SQS event sources."""
    actions = set(PLATFORM_GRANTS["logs"].required | PLATFORM_GRANTS["tracing"].required)
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        if properties.get("Handler") != f"services/{function}/handler.handler":
            continue
        if any(event.get("Type") == "SQS" for event in properties.get("Events", {}).values()):
            actions |= PLATFORM_GRANTS["sqs-event-source"].required
    return actions


@dataclass(frozen=True)
class Comparison:
    function: str
    missing: frozenset[str]  # the code needs it; no backend's policy allows it
    unused: dict[str, frozenset[str]]  # backend -> allowed, but neither code nor platform uses it

    @property
    def ok(self) -> bool:
        return not self.missing and not any(self.unused.values())


def compare(template: Mapping[str, Any], function: str) -> Comparison:
    code = code_actions(function)
    needed = (set(code.required) - set(AVOIDED_BY_CONFIGURATION)) | platform_actions(template, function)
    usable = needed | code.optional
    role = function_role(template, function)
    granted = {backend: role_actions(template, role, backend) for backend in BACKENDS}
    union = set().union(*granted.values())
    return Comparison(
        function=function,
        missing=frozenset(needed - union),
        unused={backend: frozenset(actions - usable) for backend, actions in granted.items()},
    )


# -- every policy document of the template ---------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyDocument:
    resource: str  # logical id
    kind: str  # "identity" (a role's policy) or "resource" (bucket, queue, topic, key policy)
    resource_type: str
    statements: tuple[dict[str, Any], ...]


_RESOURCE_POLICY_PROPERTY = {
    "AWS::S3::BucketPolicy": "PolicyDocument",
    "AWS::SQS::QueuePolicy": "PolicyDocument",
    "AWS::SNS::TopicPolicy": "PolicyDocument",
    "AWS::KMS::Key": "KeyPolicy",
}


def policy_documents(template: Mapping[str, Any]) -> Iterator[PolicyDocument]:
    """Every policy document of the template, for each backend's conditions (duplicates are harmless)."""
    for backend in BACKENDS:
        resources = resolve_conditions(template["Resources"], backend_conditions(backend))
        for logical, resource in resources.items():
            kind = resource["Type"]
            properties = resource.get("Properties", {})
            if kind == "AWS::IAM::Role":
                for policy in properties.get("Policies", []):
                    yield PolicyDocument(
                        logical, "identity", kind, tuple(as_list(policy["PolicyDocument"]["Statement"]))
                    )
            elif kind in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
                yield PolicyDocument(
                    logical, "identity", kind, tuple(as_list(properties["PolicyDocument"]["Statement"]))
                )
            elif kind in _RESOURCE_POLICY_PROPERTY:
                document = properties[_RESOURCE_POLICY_PROPERTY[kind]]
                yield PolicyDocument(logical, "resource", kind, tuple(as_list(document["Statement"])))


def is_tls_only_deny(statement: Mapping[str, Any]) -> bool:
    condition = statement.get("Condition", {})
    return statement.get("Effect") == "Deny" and condition == {"Bool": {"aws:SecureTransport": "false"}}


def wildcard_problems(documents: Iterable[PolicyDocument]) -> list[str]:
    """Every use of ``*`` that is not allowed: in an action, a resource, or a principal."""
    problems: list[str] = []
    for document in documents:
        for statement in document.statements:
            where = f"{document.resource} ({document.kind}) {statement.get('Sid', '?')}"
            actions = as_list(statement.get("Action", []))
            resources = as_list(statement.get("Resource", []))
            if "NotAction" in statement or "NotResource" in statement:
                problems.append(f"{where}: NotAction/NotResource")
            wildcard_actions = [action for action in actions if "*" in str(action)]
            if wildcard_actions and not is_tls_only_deny(statement):
                problems.append(f"{where}: wildcard actions {wildcard_actions}")
            if statement.get("Principal") == "*" and statement.get("Effect") != "Deny":
                problems.append(f"{where}: Allow to any principal")
            if "*" in resources and document.resource_type != "AWS::KMS::Key":
                # In a key policy, "*" is the key itself; elsewhere only for actions without resource scoping.
                unscoped = [action for action in actions if action not in STAR_RESOURCE_ACTIONS]
                if unscoped:
                    problems.append(f"{where}: Resource '*' for {unscoped}")
    return problems


def main() -> int:
    from infra.build_template import build_template

    template = build_template()
    failed = False
    for function in ("ingest", "serialize", "infer", "threshold", "monitor", "replay"):
        try:
            comparison = compare(template, function)
        except Exception as exc:  # a handler not written yet: say so and go on
            print(f"{function}: cannot compare: {exc}")
            continue
        code = code_actions(function)
        print(f"{function}: {'ok' if comparison.ok else 'MISMATCH'}")
        for action, evidence in sorted(code.required.items()):
            avoided = " (avoided by configuration)" if action in AVOIDED_BY_CONFIGURATION else ""
            print(f"  code needs {action}{avoided}: {', '.join(sorted(set(evidence)))}")
        if comparison.missing:
            print(f"  MISSING from the policy: {sorted(comparison.missing)}")
        for backend, unused in comparison.unused.items():
            if unused:
                print(f"  ALLOWED but unused ({backend}): {sorted(unused)}")
        failed = failed or not comparison.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
