"""Creates the local stack's AWS resources in moto, from the same settings and ASL file as the AWS template.

Every resource here has its twin in ``infra/template.yaml``; the parity test compares the two lists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bayroute.config import REPO_ROOT, Settings
from bayroute.local.lambda_api import function_arn
from bayroute.local.monitoring import provision_monitoring

WORKFLOW_DEFINITION = REPO_ROOT / "infra" / "statemachine" / "workflow.asl.json"
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z0-9_]+)\}")
DEAD_LETTER_RETENTION_SECONDS = 14 * 24 * 3600
INGEST_MAX_RECEIVES = 5
# moto does not check roles; a deployed stack passes the workflow's own least-privilege role.
LOCAL_WORKFLOW_ROLE = "arn:aws:iam::123456789012:role/bayroute-workflow"


class DefinitionError(ValueError):
    """The workflow definition references a substitution that was not provided."""


def render_definition(template: str, substitutions: dict[str, str]) -> str:
    """Apply DefinitionSubstitutions as CloudFormation does; every ``${Name}`` must be provided."""
    missing = sorted({m["name"] for m in SUBSTITUTION.finditer(template)} - substitutions.keys())
    if missing:
        raise DefinitionError(f"workflow definition needs substitutions for: {', '.join(missing)}")
    return SUBSTITUTION.sub(lambda m: substitutions[m["name"]], template)


def workflow_substitutions(settings: Settings, dead_letter_queue_url: str) -> dict[str, str]:
    return {
        "SerializeFunctionArn": function_arn(settings.names.serialize_function),
        "InferFunctionArn": function_arn(settings.names.infer_function),
        "ThresholdFunctionArn": function_arn(settings.names.threshold_function),
        "DeadLetterQueueUrl": dead_letter_queue_url,
        "EventBusName": settings.names.event_bus,
        "EventSource": settings.events.source,
        "DeadLetteredDetailType": settings.events.dead_lettered_detail_type,
    }


def inbox_event_pattern(settings: Settings) -> dict[str, Any]:
    return {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [settings.names.inbox_bucket]}},
    }


def outcome_event_pattern(settings: Settings) -> dict[str, Any]:
    return {
        "source": [settings.events.source],
        "detail-type": [settings.events.classified_detail_type, settings.events.dead_lettered_detail_type],
    }


@dataclass(frozen=True)
class Resources:
    """What the runtime and the CLI need to address the provisioned stack."""

    ingest_queue_url: str
    dead_letter_queue_url: str
    outcomes_queue_url: str
    oncall_topic_arn: str
    oncall_queue_url: str
    state_machine_arn: str


def provision(session: Any, settings: Settings, definition_path: Path = WORKFLOW_DEFINITION) -> Resources:
    """Create (or find, when they exist) every resource of the stack. ``session`` is a boto3 Session."""
    names = settings.names
    s3 = session.client("s3")
    sqs = session.client("sqs")
    events = session.client("events")

    for bucket in (names.inbox_bucket, names.capture_bucket):
        s3.create_bucket(Bucket=bucket)
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
    # Versioning makes a replaced object a new identity (bucket, key, version): it is processed again.
    s3.put_bucket_versioning(Bucket=names.inbox_bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_notification_configuration(
        Bucket=names.inbox_bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )

    dead_letter_url = sqs.create_queue(
        QueueName=names.dead_letter_queue,
        Attributes={"MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_SECONDS), "SqsManagedSseEnabled": "true"},
    )["QueueUrl"]
    dead_letter_arn = _queue_arn(sqs, dead_letter_url)
    ingest_url = sqs.create_queue(
        QueueName=names.ingest_queue,
        Attributes={
            "VisibilityTimeout": "60",
            "SqsManagedSseEnabled": "true",
            # Last resort only: ingest dead-letters bad objects itself; this catches a crashing ingest.
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": INGEST_MAX_RECEIVES}
            ),
        },
    )["QueueUrl"]
    outcomes_url = sqs.create_queue(QueueName=names.outcomes_queue, Attributes={"SqsManagedSseEnabled": "true"})[
        "QueueUrl"
    ]

    for rule, pattern, queue_url in (
        (names.inbox_rule, inbox_event_pattern(settings), ingest_url),
        (names.outcomes_rule, outcome_event_pattern(settings), outcomes_url),
    ):
        events.put_rule(Name=rule, EventBusName=names.event_bus, EventPattern=json.dumps(pattern), State="ENABLED")
        events.put_targets(
            Rule=rule, EventBusName=names.event_bus, Targets=[{"Id": "queue", "Arn": _queue_arn(sqs, queue_url)}]
        )

    monitoring = provision_monitoring(session, settings)
    _create_idempotency_table(session.client("dynamodb"), names.idempotency_table)

    definition = render_definition(
        definition_path.read_text(encoding="utf-8"), workflow_substitutions(settings, dead_letter_url)
    )
    state_machine_arn = _create_state_machine(session.client("stepfunctions"), names.state_machine, definition)
    return Resources(
        ingest_queue_url=ingest_url,
        dead_letter_queue_url=dead_letter_url,
        outcomes_queue_url=outcomes_url,
        oncall_topic_arn=monitoring.oncall_topic_arn,
        oncall_queue_url=monitoring.oncall_queue_url,
        state_machine_arn=state_machine_arn,
    )


def _queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def _create_idempotency_table(dynamodb: Any, name: str) -> None:
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            SSESpecification={"Enabled": True},
        )
    except dynamodb.exceptions.ResourceInUseException:
        return
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )


def _create_state_machine(sfn: Any, name: str, definition: str) -> str:
    for machine in sfn.list_state_machines()["stateMachines"]:
        if machine["name"] == name:
            sfn.update_state_machine(stateMachineArn=machine["stateMachineArn"], definition=definition)
            return str(machine["stateMachineArn"])
    return str(
        sfn.create_state_machine(name=name, definition=definition, roleArn=LOCAL_WORKFLOW_ROLE, type="EXPRESS")[
            "stateMachineArn"
        ]
    )
