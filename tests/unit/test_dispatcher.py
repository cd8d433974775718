from __future__ import annotations

import json

from bayroute.local.dispatcher import failed_message_ids, sqs_event

BATCH = [
    {"MessageId": "m1", "ReceiptHandle": "r1", "Body": '{"a": 1}'},
    {"MessageId": "m2", "ReceiptHandle": "r2", "Body": '{"b": 2}', "MD5OfBody": "given"},
]


def test_the_event_has_lambdas_sqs_record_shape() -> None:
    event = sqs_event(BATCH, "arn:aws:sqs:us-east-1:1:q", "us-east-1")
    first, second = event["Records"]
    assert first["messageId"] == "m1"
    assert first["receiptHandle"] == "r1"
    assert json.loads(first["body"]) == {"a": 1}
    assert first["eventSource"] == "aws:sqs"
    assert first["eventSourceARN"] == "arn:aws:sqs:us-east-1:1:q"
    assert len(first["md5OfBody"]) == 32
    assert second["md5OfBody"] == "given"


def test_partial_batch_failures_keep_only_the_named_messages() -> None:
    answer = json.dumps({"batchItemFailures": [{"itemIdentifier": "m2"}, {"itemIdentifier": "unknown"}]})
    assert failed_message_ids(answer.encode(), False, BATCH) == {"m2"}
    assert failed_message_ids(b'{"batchItemFailures": []}', False, BATCH) == set()
    assert failed_message_ids(b"null", False, BATCH) == set()


def test_a_failed_invocation_or_garbage_answer_keeps_the_whole_batch() -> None:
    assert failed_message_ids(b"{}", True, BATCH) == {"m1", "m2"}
    assert failed_message_ids(b"<html>", False, BATCH) == {"m1", "m2"}
