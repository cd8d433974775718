"""The AWS SAM template, checked offline: generated from the one definition, lint-clean, transformable,
wired to the one workflow definition, and in parity with what the local runtime creates."""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml
from cfnlint.api import ManualArgs, lint
from moto import mock_aws
from samtranslator.translator.transform import transform

from bayroute.config import load_settings
from bayroute.local.provision import (
    DEAD_LETTER_RETENTION_SECONDS,
    INGEST_MAX_RECEIVES,
    inbox_event_pattern,
    outcome_event_pattern,
    provision,
    workflow_substitutions,
)
from bayroute.monitoring.alarms import load_alarm_definitions
from infra.build_template import (
    TEMPLATE_FILE,
    WORKFLOW_DEFINITION,
    build_template,
    placeholders,
    render,
)
from infra.codegraph import handler_module, module_path, reachable_code

SETTINGS = load_settings(env={})
NAMES = vars(SETTINGS.names)
TEMPLATE: dict[str, Any] = yaml.safe_load(TEMPLATE_FILE.read_text(encoding="utf-8"))
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
ALARMS = load_alarm_definitions()
FUNCTIONS = ("ingest", "serialize", "infer", "threshold", "monitor", "replay")
# Metadata key beside cfn-lint's ignore_checks that must give each ignored rule's reason.
LINT_REASONS_KEY = "bayroute-cfn-lint-reasons"


def of_type(kind: str, resources: dict[str, Any] = RESOURCES) -> dict[str, dict[str, Any]]:
    return {name: resource for name, resource in resources.items() if resource["Type"] == kind}


def packaged(template: dict[str, Any]) -> dict[str, Any]:
    """The template as `sam deploy` sends it: local code and definition paths replaced by S3 locations."""
    result = copy.deepcopy(template)
    for logical, resource in result["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://artifacts/{logical}.zip"
        elif resource["Type"] == "AWS::Serverless::StateMachine":
            resource["Properties"]["DefinitionUri"] = "s3://artifacts/workflow.asl.json"
    return result


class _NoManagedPolicies:
    """The translator asks IAM for managed policy ARNs only when a template names one; this one names none."""

    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the translator's pseudo-parameters need a region
        return transform(packaged(TEMPLATE), {}, _NoManagedPolicies())


# -- one definition ---------------------------------------------------------------------------------------------


def test_the_committed_template_is_what_settings_and_alarms_generate() -> None:
    assert TEMPLATE_FILE.read_text(encoding="utf-8") == render(build_template()), (
        "infra/template.yaml is stale: run `python -m infra.build_template`"
    )


def test_a_changed_name_in_settings_changes_the_template(tmp_path: Any) -> None:
    raw = json.loads((TEMPLATE_FILE.parent / "settings.json").read_text(encoding="utf-8"))
    raw["names"]["dead_letter_queue"] = "renamed-dlq"
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(raw), encoding="utf-8")
    template = build_template(settings_path=settings_file)
    assert template["Resources"]["DeadLetterQueue"]["Properties"]["QueueName"] == "renamed-dlq"
    depth = template["Resources"]["BayrouteDeadLetterDepthAlarm"]["Properties"]["Dimensions"]
    assert depth == [{"Name": "QueueName", "Value": "renamed-dlq"}]


# -- cfn-lint and the SAM transform -------------------------------------------------------------------------------


def _lint_directives(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "cfn-lint" in node:
            yield path, node
        for key, value in node.items():
            yield from _lint_directives(value, f"{path}/{key}")


def test_cfn_lint_finds_nothing() -> None:
    matches = lint(TEMPLATE_FILE.read_text(encoding="utf-8"), config=ManualArgs(regions=["us-east-1"]))
    assert [str(match) for match in matches] == []


def test_every_ignored_lint_rule_has_a_written_reason() -> None:
    for path, metadata in _lint_directives(TEMPLATE):
        ignored = metadata["cfn-lint"].get("config", {}).get("ignore_checks", [])
        reasons = metadata.get(LINT_REASONS_KEY, {})
        assert all(reasons.get(rule, "").strip() for rule in ignored), f"{path}: {ignored} without reasons"


def test_the_sam_transform_yields_the_stack(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    functions = of_type("AWS::Lambda::Function", resources)
    assert len(functions) == len(FUNCTIONS)
    handlers = sorted(function["Properties"]["Handler"] for function in functions.values())
    assert handlers == sorted(f"services/{name}/handler.handler" for name in FUNCTIONS)
    for function in functions.values():
        properties = function["Properties"]
        assert properties["Runtime"] == "python3.12"
        assert properties["Architectures"] == ["arm64"]
        assert properties["TracingConfig"] == {"Mode": "Active"}
    named = {function["Properties"].get("FunctionName") for function in functions.values()}
    assert {NAMES[f"{name}_function"] for name in FUNCTIONS if name != "replay"} <= named

    # One role per function, the workflow's and the endpoint's: SAM generated none of its own.
    roles = of_type("AWS::IAM::Role", resources)
    assert set(roles) == {f"{name.capitalize()}Role" for name in FUNCTIONS} | {"WorkflowRole", "EndpointRole"}
    assert not any("ManagedPolicyArns" in role["Properties"] for role in roles.values())

    (machine,) = of_type("AWS::StepFunctions::StateMachine", resources).values()
    properties = machine["Properties"]
    assert properties["StateMachineName"] == NAMES["state_machine"]
    assert properties["StateMachineType"] == "EXPRESS"
    assert properties["TracingConfiguration"] == {"Enabled": True}
    assert properties["LoggingConfiguration"]["IncludeExecutionData"] is True
    assert properties["LoggingConfiguration"]["Destinations"]

    (mapping,) = of_type("AWS::Lambda::EventSourceMapping", resources).values()
    assert mapping["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
    assert mapping["Properties"]["BatchSize"] == SETTINGS.ingest_batch_size  # as the local poller receives

    rules = of_type("AWS::Events::Rule", resources)
    assert {"InboxRule", "OutcomesRule"} <= set(rules)
    (schedule,) = (rule for name, rule in rules.items() if name not in {"InboxRule", "OutcomesRule"})
    assert schedule["Properties"]["ScheduleExpression"] == {"Ref": "MonitorSchedule"}
    assert len(of_type("AWS::SQS::Queue", resources)) == 4
    assert len(of_type("AWS::S3::Bucket", resources)) == 2
    assert {alarm["Properties"]["AlarmName"] for alarm in of_type("AWS::CloudWatch::Alarm", resources).values()} == {
        alarm.name for alarm in ALARMS
    }
    assert len(of_type("AWS::CloudWatch::Dashboard", resources)) == 1


def test_every_handler_the_template_names_exists() -> None:
    for name in FUNCTIONS:
        path = module_path(handler_module(name))
        assert path is not None, f"services/{name}/handler.py is missing"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert any(isinstance(node, ast.FunctionDef) and node.name == "handler" for node in tree.body)


# -- the workflow definition ---------------------------------------------------------------------------------------


def test_definition_substitutions_cover_the_workflow_exactly() -> None:
    definition = WORKFLOW_DEFINITION.read_text(encoding="utf-8")
    json.loads(definition)
    substitutions = RESOURCES["Workflow"]["Properties"]["DefinitionSubstitutions"]
    assert set(substitutions) == placeholders(definition)
    # The local runtime renders the same placeholders, with the same literal values.
    local = workflow_substitutions(SETTINGS, "http://queue")
    assert set(local) == set(substitutions)
    for key, value in substitutions.items():
        if isinstance(value, str):
            assert value == local[key]
    assert substitutions["SerializeFunctionArn"] == {"Fn::GetAtt": ["SerializeFunction", "Arn"]}
    assert substitutions["DeadLetterQueueUrl"] == {"Ref": "DeadLetterQueue"}


def test_every_task_retries_and_every_step_task_catches() -> None:
    states = json.loads(WORKFLOW_DEFINITION.read_text(encoding="utf-8"))["States"]
    tasks = {name: state for name, state in states.items() if state["Type"] == "Task"}
    assert tasks
    for name, state in tasks.items():
        assert state.get("Retry"), f"{name} has no Retry"
        if state["Resource"] == "arn:aws:states:::lambda:invoke":
            assert [catch["ErrorEquals"] for catch in state["Catch"]] == [["States.ALL"]], name
        else:
            # The dead-letter tasks retry until they succeed: catching their failure would have nowhere to go.
            assert state["Next"] in states, name


# -- parity with the local runtime ---------------------------------------------------------------------------------


BUCKET_SUFFIX = "-${AWS::AccountId}-${AWS::Region}"


def template_names() -> dict[str, set[str]]:
    def bucket(resource: dict[str, Any]) -> str:
        name = resource["Properties"]["BucketName"]["Fn::Sub"]
        assert name.endswith(BUCKET_SUFFIX), name
        return str(name[: -len(BUCKET_SUFFIX)])

    return {
        "buckets": {bucket(r) for r in of_type("AWS::S3::Bucket").values()},
        "queues": {r["Properties"]["QueueName"] for r in of_type("AWS::SQS::Queue").values()},
        "topics": {r["Properties"]["TopicName"] for r in of_type("AWS::SNS::Topic").values()},
        "tables": {r["Properties"]["TableName"] for r in of_type("AWS::DynamoDB::Table").values()},
        # The monitor's schedule is an event of its function (SAM), not a named rule: the local runtime runs
        # the monitor on its own timer.
        "rules": {r["Properties"]["Name"] for r in of_type("AWS::Events::Rule").values()},
        "state machines": {r["Properties"]["Name"] for r in of_type("AWS::Serverless::StateMachine").values()},
        "alarms": {r["Properties"]["AlarmName"] for r in of_type("AWS::CloudWatch::Alarm").values()},
    }


@pytest.fixture(scope="module")
def local_names() -> dict[str, set[str]]:
    with mock_aws():
        session = boto3.Session(region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local")
        provision(session, SETTINGS)
        sqs, events = session.client("sqs"), session.client("events")
        return {
            "buckets": {b["Name"] for b in session.client("s3").list_buckets()["Buckets"]},
            "queues": {url.rsplit("/", 1)[1] for url in sqs.list_queues().get("QueueUrls", [])},
            "topics": {t["TopicArn"].rsplit(":", 1)[1] for t in session.client("sns").list_topics()["Topics"]},
            "tables": set(session.client("dynamodb").list_tables()["TableNames"]),
            "rules": {r["Name"] for r in events.list_rules(EventBusName=NAMES["event_bus"])["Rules"]},
            "state machines": {
                m["name"] for m in session.client("stepfunctions").list_state_machines()["stateMachines"]
            },
            "alarms": {a["AlarmName"] for a in session.client("cloudwatch").describe_alarms()["MetricAlarms"]},
        }


@pytest.mark.parametrize("kind", ["buckets", "queues", "topics", "tables", "rules", "state machines", "alarms"])
def test_template_and_local_runtime_create_the_same(kind: str, local_names: dict[str, set[str]]) -> None:
    assert template_names()[kind] == local_names[kind]
    assert local_names[kind], f"the local runtime creates no {kind}"


ALARM_SETTINGS = (
    "Namespace",
    "MetricName",
    "Statistic",
    "Period",
    "EvaluationPeriods",
    "DatapointsToAlarm",
    "Threshold",
    "ComparisonOperator",
    "TreatMissingData",
)


def test_alarms_are_configured_alike_on_both_sides() -> None:
    with mock_aws():
        session = boto3.Session(region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local")
        provision(session, SETTINGS)
        local = {a["AlarmName"]: a for a in session.client("cloudwatch").describe_alarms()["MetricAlarms"]}
    for resource in of_type("AWS::CloudWatch::Alarm").values():
        template = resource["Properties"]
        mine = local[template["AlarmName"]]
        assert {key: mine[key] for key in ALARM_SETTINGS} == {key: template[key] for key in ALARM_SETTINGS}
        assert [d["Name"] for d in mine["Dimensions"]] == [d["Name"] for d in template["Dimensions"]]
        assert len(mine["AlarmActions"]) == len(template["AlarmActions"]) == 1


def test_event_patterns_are_the_local_runtime_patterns() -> None:
    inbox = copy.deepcopy(RESOURCES["InboxRule"]["Properties"]["EventPattern"])
    assert inbox["detail"]["bucket"]["name"] == [{"Ref": "InboxBucket"}]
    inbox["detail"]["bucket"]["name"] = [NAMES["inbox_bucket"]]
    assert inbox == inbox_event_pattern(SETTINGS)
    assert RESOURCES["OutcomesRule"]["Properties"]["EventPattern"] == outcome_event_pattern(SETTINGS)


def test_queues_keep_the_local_runtime_settings() -> None:
    dlq = RESOURCES["DeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == DEAD_LETTER_RETENTION_SECONDS == 1209600
    redrive = RESOURCES["IngestQueue"]["Properties"]["RedrivePolicy"]
    assert redrive == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": INGEST_MAX_RECEIVES,
    }
    assert all(queue["Properties"]["SqsManagedSseEnabled"] is True for queue in of_type("AWS::SQS::Queue").values())


# -- the pieces the issue asks for ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["InboxBucket", "CaptureBucket"])
def test_buckets_are_private_encrypted_tls_only_and_expire(bucket: str) -> None:
    properties = RESOURCES[bucket]["Properties"]
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert properties["LifecycleConfiguration"]["Rules"]
    (statement,) = RESOURCES[f"{bucket}Policy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [{"Fn::GetAtt": [bucket, "Arn"]}, {"Fn::Sub": f"${{{bucket}.Arn}}/*"}]


def test_inbox_sends_events_to_eventbridge_and_capture_expires_by_parameter() -> None:
    inbox = RESOURCES["InboxBucket"]["Properties"]
    assert inbox["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    assert inbox["VersioningConfiguration"] == {"Status": "Enabled"}
    capture_rules = RESOURCES["CaptureBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = {rule.get("Prefix"): rule.get("ExpirationInDays") for rule in capture_rules}
    assert expiring[f"{SETTINGS.prefixes.capture}/"] == {"Ref": "CaptureExpiryDays"}
    assert expiring[f"{SETTINGS.prefixes.results}/"] == {"Ref": "CaptureExpiryDays"}


def test_inbox_rule_retries_then_dead_letters_and_only_its_rule_may_send() -> None:
    (target,) = RESOURCES["InboxRule"]["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}}
    for queue in ("IngestQueue", "DeadLetterQueue"):
        allowed = RESOURCES[f"{queue}Policy"]["Properties"]["PolicyDocument"]["Statement"][0]
        assert allowed["Principal"] == {"Service": "events.amazonaws.com"}
        assert allowed["Condition"] == {"ArnEquals": {"aws:SourceArn": [{"Fn::GetAtt": ["InboxRule", "Arn"]}]}}


def test_oncall_topic_is_encrypted_with_a_key_cloudwatch_may_use_and_email_is_optional() -> None:
    assert RESOURCES["OncallTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "OncallKey"}
    key_statements = RESOURCES["OncallKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert any(s["Principal"] == {"Service": "cloudwatch.amazonaws.com"} for s in key_statements)
    subscription = RESOURCES["OncallEmailSubscription"]
    assert subscription["Condition"] == "HasOnCallEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "OnCallEmail"}


def test_idempotency_table_matches_powertools_defaults() -> None:
    table = RESOURCES["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["SSESpecification"] == {"SSEEnabled": True}


def test_sagemaker_backend_captures_every_request_in_the_local_layout() -> None:
    for logical in ("EndpointModel", "EndpointConfig", "Endpoint", "EndpointRole"):
        assert RESOURCES[logical]["Condition"] == "UseSageMaker"
    config = RESOURCES["EndpointConfig"]["Properties"]
    capture = config["DataCaptureConfig"]
    assert capture["InitialSamplingPercentage"] == 100
    assert capture["DestinationS3Uri"] == {"Fn::Sub": f"s3://${{CaptureBucket}}/{SETTINGS.prefixes.capture}"}
    assert capture["CaptureContentTypeHeader"] == {"JsonContentTypes": ["application/json"]}
    assert config["ProductionVariants"][0]["VariantName"] == NAMES["endpoint_variant"]
    assert RESOURCES["Endpoint"]["Properties"]["EndpointName"] == NAMES["endpoint_name"]
    assert RESOURCES["EndpointModel"]["Properties"]["PrimaryContainer"]["Image"] == {"Ref": "EndpointImageUri"}


def test_lambda_backend_runs_onnx_in_a_big_enough_function() -> None:
    memory = RESOURCES["InferFunction"]["Properties"]["MemorySize"]
    assert memory["Fn::If"][0] == "UseSageMaker"
    assert memory["Fn::If"][2] >= 1024


def test_functions_get_the_settings_environment_with_this_stacks_names() -> None:
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    local = SETTINGS.to_env()
    # The endpoint URL is the local (http) backend's; the model path default already points into the package.
    assert set(local) - set(variables) == {"BAYROUTE_ENDPOINT_URL", "BAYROUTE_MODEL_PATH"}
    for key, value in variables.items():
        if isinstance(value, str) and key in local:
            assert value == local[key], key
    assert variables["BAYROUTE_INBOX_BUCKET"] == {"Ref": "InboxBucket"}
    assert variables["BAYROUTE_INFERENCE_BACKEND"] == {"Ref": "InferenceBackend"}
    assert variables["BAYROUTE_THRESHOLD"] == {"Ref": "Threshold"}
    assert TEMPLATE["Parameters"]["Threshold"]["Default"] == SETTINGS.threshold
    assert TEMPLATE["Parameters"]["MonitorSchedule"]["Default"] == SETTINGS.monitoring.schedule


def test_infer_alone_traces_without_the_xray_sdk_and_keeps_every_setting(transformed: dict[str, Any]) -> None:
    """Deployed, infer's cold start skips the X-Ray SDK (it loads botocore); SAM merges its own variable into the
    globals rather than replacing them, so it still gets every setting."""
    functions = of_type("AWS::Lambda::Function", transformed["Resources"])
    globals_ = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    for logical, function in functions.items():
        variables = function["Properties"]["Environment"]["Variables"]
        assert function["Properties"]["TracingConfig"] == {"Mode": "Active"}  # Lambda still records each invocation
        if logical == "InferFunction":
            assert variables == {**globals_, "POWERTOOLS_TRACE_DISABLED": "true"}
        else:
            assert variables == globals_, logical


def test_alarm_resources_are_the_definitions() -> None:
    alarms = {
        resource["Properties"]["AlarmName"]: resource["Properties"]
        for resource in of_type("AWS::CloudWatch::Alarm").values()
    }
    for definition in ALARMS:
        properties = alarms[definition.name]
        assert (properties["Namespace"], properties["MetricName"]) == (definition.namespace, definition.metric)
        assert properties["Statistic"] == definition.statistic
        assert properties["Period"] == definition.period
        assert properties["EvaluationPeriods"] == definition.evaluation_periods
        assert properties["DatapointsToAlarm"] == definition.datapoints_to_alarm
        assert properties["Threshold"] == definition.threshold
        assert properties["ComparisonOperator"] == definition.comparison
        assert properties["TreatMissingData"] == definition.treat_missing_data
        assert properties["AlarmActions"] == properties["OKActions"] == [{"Ref": "OncallTopic"}]
        assert [d["Name"] for d in properties["Dimensions"]] == list(definition.dimensions)


def test_the_issues_alarms_are_all_defined() -> None:
    metrics = {(alarm.namespace, alarm.metric) for alarm in ALARMS}
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in metrics  # DLQ depth
    assert ("AWS/States", "ExecutionsFailed") in metrics
    assert {("AWS/Lambda", "Errors"), ("AWS/Lambda", "Duration")} <= metrics  # endpoint errors, latency
    custom = {alarm.metric for alarm in ALARMS if not alarm.namespace.startswith("AWS/")}
    assert custom == {"BelowThresholdShare", "DriftScore"}
    assert {alarm.namespace for alarm in ALARMS if alarm.metric in custom} == {SETTINGS.monitoring.namespace}


def _string_literals(function: str) -> set[str]:
    code = reachable_code(handler_module(function))
    return {node.value for _, node in code.walk() if isinstance(node, ast.Constant) and isinstance(node.value, str)}


@pytest.mark.parametrize("alarm", [a for a in ALARMS if a.published_by != "aws"], ids=lambda a: a.name)
def test_the_function_that_publishes_an_alarms_metric_names_it(alarm: Any) -> None:
    function = re.sub(r"_function$", "", alarm.published_by)
    if module_path(handler_module(function)) is None:
        pytest.skip(f"services/{function}/handler.py is not written yet; it must publish {alarm.metric}")
    assert alarm.metric in _string_literals(function)
