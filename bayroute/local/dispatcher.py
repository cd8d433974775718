"""The local twin of a Lambda SQS event source mapping: poll a queue, invoke a function with batches.

As on AWS: up to ``batch_size`` messages a batch (the settings' ``ingest.batch_size``, which the template's
event source mapping uses too), the function gets the standard SQS event, messages named in its
``batchItemFailures`` (or the whole batch, when the function fails) stay in the queue and come back after
their visibility timeout, the others are deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

from bayroute.local.lambda_api import LocalFunction, invoke

logger = logging.getLogger(__name__)
POLL_WAIT_SECONDS = 1
# The whole batch failed: wait before polling again so a crashing function does not spin.
FAILURE_BACKOFF_SECONDS = 0.5


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda delivers for a batch of SQS messages."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": message.get("MessageAttributes", {}),
                "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for message in messages
        ]
    }


def failed_message_ids(response_body: bytes, failed: bool, batch: list[dict[str, Any]]) -> set[str]:
    """Which messages of the batch must stay in the queue, from the function's answer."""
    all_ids = {message["MessageId"] for message in batch}
    if failed:
        return all_ids
    try:
        answer = json.loads(response_body)
    except ValueError:
        return all_ids
    if not isinstance(answer, dict):
        return set()
    failures = answer.get("batchItemFailures") or []
    return {str(item.get("itemIdentifier")) for item in failures if isinstance(item, dict)} & all_ids


class SqsDispatcher:
    def __init__(self, sqs: Any, queue_url: str, function: LocalFunction, region: str, batch_size: int) -> None:
        self._sqs = sqs
        self._batch_size = batch_size
        self._queue_url = queue_url
        self._function = function
        self._region = region
        self._queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dispatch-{function.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=POLL_WAIT_SECONDS + 10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception:
                if self._stopping.is_set():
                    return
                logger.exception("dispatcher for %s failed to poll; retrying", self._function.name)
                time.sleep(FAILURE_BACKOFF_SECONDS)

    def poll_once(self) -> int:
        """Receive one batch and hand it to the function; returns the number of messages received."""
        batch = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=POLL_WAIT_SECONDS,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return 0
        payload = json.dumps(sqs_event(batch, self._queue_arn, self._region)).encode()
        body, failed = invoke(self._function, payload)
        keep = failed_message_ids(body, failed, batch)
        done = [m for m in batch if m["MessageId"] not in keep]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        if failed:
            logger.warning("%s failed a batch of %d: %s", self._function.name, len(batch), body[:500])
            time.sleep(FAILURE_BACKOFF_SECONDS)
        return len(batch)
