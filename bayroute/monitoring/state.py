"""The monitor's durable state: which capture objects it has read, and the drift counts of the last hour.

Where: one JSON object in the capture bucket (key ``settings.monitoring.watermark_key``), beside the records it
describes. An S3 object rather than an item of the idempotency table because the set of recently read keys
can outgrow DynamoDB's 400 KB item limit at a few thousand records per quarter hour, because the monitor
already holds read access to that bucket and needs no other, and because locally the capture bucket already
lives in moto. Writes are conditional (``If-Match`` on the ETag read, ``If-None-Match: *`` for the first), so
two overlapping passes cannot both commit: the second fails with ``ConcurrentPass`` and commits nothing.

The watermark, exactly once per object: S3's ``LastModified`` orders the objects, and a key is new when its
``LastModified`` is at or after ``cursor - VISIBILITY_GRACE`` and it is not among ``seen`` (the keys read whose
``LastModified`` is within that grace). After a pass the cursor moves to the newest ``LastModified`` read
and ``seen`` keeps what is still within the grace. So a key is read once; and an object that becomes visible
in a listing up to ``VISIBILITY_GRACE`` after its ``LastModified`` (an upload still in flight when a pass
listed) is read by the next pass rather than lost. A restart reads the state back and goes on.

Listing stays cheap: capture keys sit in hourly folders named by the request time, which precedes the write
by at most the workflow's duration (minutes); listing starts ``KEY_TIME_LAG`` before the grace, folder-wise.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from bayroute.monitoring.stats import add_counts

STATE_VERSION = 1
VISIBILITY_GRACE = timedelta(minutes=15)
KEY_TIME_LAG = timedelta(hours=1)


class ConcurrentPass(RuntimeError):
    """Another monitor pass committed the state since this one read it; this pass's commit was refused."""


class StateFormatError(ValueError):
    """The stored monitor state is not a state this code wrote."""


@dataclass(frozen=True)
class CaptureObject:
    key: str
    last_modified: datetime


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


@dataclass
class MonitorState:
    cursor: datetime | None = None
    seen: dict[str, datetime] = field(default_factory=dict)
    # model version -> window start (epoch seconds, as text) -> feature -> bin counts
    drift: dict[str, dict[str, dict[str, list[int]]]] = field(default_factory=dict)
    etag: str | None = None  # of the stored object this state was read from; None: not stored yet

    # -- the watermark ---------------------------------------------------------------------------------

    @property
    def listing_since(self) -> datetime | None:
        """The earliest ``LastModified`` a new object can have (None: everything is new)."""
        return None if self.cursor is None else self.cursor - VISIBILITY_GRACE

    def new_objects(self, listed: Iterable[CaptureObject]) -> list[CaptureObject]:
        """The listed objects not read yet, oldest first (by ``LastModified``, then key)."""
        since = self.listing_since
        fresh = [
            item for item in listed if item.key not in self.seen and (since is None or item.last_modified >= since)
        ]
        return sorted(fresh, key=lambda item: (item.last_modified, item.key))

    def mark_read(self, objects: Sequence[CaptureObject]) -> None:
        for item in objects:
            self.seen[item.key] = item.last_modified
            if self.cursor is None or item.last_modified > self.cursor:
                self.cursor = item.last_modified
        since = self.listing_since
        if since is not None:
            self.seen = {key: when for key, when in self.seen.items() if when >= since}

    # -- drift counts ------------------------------------------------------------------------------------

    def add_drift_counts(self, model_version: str, window: datetime, counts: Mapping[str, Sequence[int]]) -> None:
        windows = self.drift.setdefault(model_version, {})
        slot = windows.setdefault(str(int(window.timestamp())), {})
        for feature, values in counts.items():
            if any(len(f.get(feature, values)) != len(values) for f in windows.values()):
                # The bins changed (another baseline under the same version): the old counts mean nothing.
                for features in windows.values():
                    features.pop(feature, None)
            slot[feature] = add_counts(slot.get(feature), values)

    def drift_totals(self, model_version: str, since: datetime) -> dict[str, list[int]]:
        """Summed counts of each feature over the windows starting at or after ``since``."""
        totals: dict[str, list[int]] = {}
        for start, features in self.drift.get(model_version, {}).items():
            if int(start) < since.timestamp():
                continue
            for feature, values in features.items():
                totals[feature] = add_counts(totals.get(feature), values)
        return totals

    def prune_drift(self, before: datetime) -> None:
        """Forget the drift counts of windows that start before ``before``."""
        for version in list(self.drift):
            kept = {start: f for start, f in self.drift[version].items() if int(start) >= before.timestamp()}
            if kept:
                self.drift[version] = kept
            else:
                del self.drift[version]

    # -- storage form ----------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                # Unique per write, so that two passes committing the same watermark still differ in ETag and
                # the conditional write refuses the second.
                "write_id": uuid.uuid4().hex,
                "cursor": None if self.cursor is None else _iso(self.cursor),
                "seen": {key: _iso(when) for key, when in sorted(self.seen.items())},
                "drift": self.drift,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes, etag: str | None) -> MonitorState:
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise StateFormatError(f"monitor state version {data.get('version')!r}, expected {STATE_VERSION}")
            cursor = data.get("cursor")
            return cls(
                cursor=None if cursor is None else datetime.fromisoformat(cursor),
                seen={key: datetime.fromisoformat(when) for key, when in data.get("seen", {}).items()},
                drift={
                    str(version): {
                        str(start): {str(f): [int(c) for c in counts] for f, counts in features.items()}
                        for start, features in windows.items()
                    }
                    for version, windows in data.get("drift", {}).items()
                },
                etag=etag,
            )
        except (ValueError, TypeError, AttributeError) as exc:
            if isinstance(exc, StateFormatError):
                raise
            raise StateFormatError(f"unreadable monitor state: {exc}") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class StateStore:
    """The state object in S3, read with its ETag and written only if nobody wrote it in between."""

    def __init__(self, s3: Any, bucket: str, key: str) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.key = key

    def load(self) -> MonitorState:
        try:
            answer = self._s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return MonitorState()
            raise
        return MonitorState.from_json(answer["Body"].read(), etag=answer["ETag"])

    def save(self, state: MonitorState) -> None:
        condition = {"IfMatch": state.etag} if state.etag else {"IfNoneMatch": "*"}
        try:
            answer = self._s3.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=state.to_json().encode("utf-8"),
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise ConcurrentPass(
                    f"s3://{self.bucket}/{self.key} changed since this pass read it: another monitor pass ran"
                ) from exc
            raise
        state.etag = answer["ETag"]


def list_capture_objects(s3: Any, bucket: str, prefix: str, since: datetime | None) -> list[CaptureObject]:
    """The objects under ``prefix`` that may have ``LastModified >= since`` (all of them when None).

    With ``since``, each ``{prefix}/{endpoint}/{variant}/`` folder is listed from the hourly folder of
    ``since - KEY_TIME_LAG`` on (keys before it are older records); objects are still filtered by the caller.
    """
    root = prefix.strip("/") + "/" if prefix.strip("/") else ""
    paginator = s3.get_paginator("list_objects_v2")

    def listed(folder: str, start_after: str | None = None) -> list[CaptureObject]:
        found = []
        extra = {"StartAfter": start_after} if start_after else {}
        for page in paginator.paginate(Bucket=bucket, Prefix=folder, **extra):
            for item in page.get("Contents", []):
                when = item["LastModified"]
                if since is None or when >= since:
                    found.append(CaptureObject(key=item["Key"], last_modified=when.astimezone(UTC)))
        return found

    if since is None:
        return listed(root)

    def subfolders(folder: str) -> list[str]:
        names: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=folder, Delimiter="/"):
            names.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return names

    hour = (since - KEY_TIME_LAG).astimezone(UTC).strftime("%Y/%m/%d/%H")
    objects = []
    for endpoint in subfolders(root):
        for variant in subfolders(endpoint):
            objects.extend(listed(variant, start_after=f"{variant}{hour}"))
    return objects
