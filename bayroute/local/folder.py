"""The user's inbox as a folder: ``DIR/inbox/`` in, ``DIR/routed/`` and ``DIR/dead-letter/`` out.

Each new file in the inbox folder is put into the inbox bucket; when its object reaches a terminal state
(a ``VehicleClassified`` or ``ObjectDeadLettered`` event on the outcomes queue), a JSON sidecar is written
beside its destination first and only then is the file moved out of the inbox. A crash therefore loses
nothing: on start, a file whose sidecar already exists (same content digest) only finishes its move, and
every other file still in the inbox is submitted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayroute.config import Settings
from bayroute.errors import error_facts, reason_code

logger = logging.getLogger(__name__)

INBOX, ROUTED, DEAD_LETTER = "inbox", "routed", "dead-letter"
SIDECAR_SUFFIX = ".json"
SCAN_INTERVAL_SECONDS = 0.1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_candidate(path: Path) -> bool:
    """Files people drop in; hidden and temporary files (editors, partial copies) are left alone."""
    name = path.name
    return path.is_file() and not name.startswith(".") and not name.endswith((".part", ".tmp", "~"))


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def outcome_record(event: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    """The sidecar document for an outcome event, or None when the event is not an outcome."""
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return None
    request = detail.get("request") or {}
    if event.get("detail-type") == settings.events.classified_detail_type:
        return {
            "status": "routed",
            "object_key": request.get("key"),
            "class": detail.get("class"),
            "confidence": detail.get("confidence"),
            "bay": detail.get("bay"),
            "orders": detail.get("orders"),
            "model_version": detail.get("model_version"),
            "threshold": detail.get("threshold"),
            "request": request,
            "decided_at": detail.get("routed_at") or event.get("time"),
        }
    if event.get("detail-type") == settings.events.dead_lettered_detail_type:
        error = str(detail.get("error", ""))
        reason, reason_detail = reason_code(error, detail.get("cause"))
        facts = error_facts(detail.get("cause"))
        return {
            "status": "dead-lettered",
            "object_key": request.get("key"),
            "reason": detail.get("reason") or reason,
            "detail": reason_detail,
            "error": error,
            "step": detail.get("step"),
            # What the model said, when it got that far (below the threshold: class and confidence).
            **{key: facts[key] for key in ("class", "confidence", "model_version") if key in facts},
            "request": request,
            "decided_at": detail.get("failed_at") or event.get("time"),
        }
    return None


@dataclass
class Tracked:
    """A file of the inbox folder, from its upload until its terminal record."""

    path: Path
    sha256: str
    key: str
    etag: str
    version_id: str | None
    submitted_at: float = field(default_factory=time.monotonic)


@dataclass
class FolderCounts:
    submitted: int = 0
    routed: int = 0
    dead_lettered: int = 0

    @property
    def in_flight(self) -> int:
        return self.submitted - self.routed - self.dead_lettered


class InboxFolder:
    """Watches ``workdir/inbox`` and settles files into ``routed``/``dead-letter`` from outcome events."""

    def __init__(
        self,
        workdir: Path,
        settings: Settings,
        s3: Any,
        sqs: Any,
        outcomes_queue_url: str,
        on_settled: Callable[[Path, dict[str, Any]], None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.inbox = workdir / INBOX
        self.routed = workdir / ROUTED
        self.dead_letter = workdir / DEAD_LETTER
        self._settings = settings
        self._s3 = s3
        self._sqs = sqs
        self._outcomes_queue_url = outcomes_queue_url
        self._on_settled = on_settled
        self._tracked: dict[tuple[str, str], Tracked] = {}  # (key, version or etag) → file
        self._tracked_paths: set[Path] = set()
        self._sizes: dict[Path, tuple[int, int]] = {}  # last seen (size, mtime) for the stability check
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counts = FolderCounts()
        for folder in (self.inbox, self.routed, self.dead_letter):
            folder.mkdir(parents=True, exist_ok=True)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        for target, name in ((self._watch, "inbox-watch"), (self._settle, "inbox-settle")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def pending(self) -> int:
        with self._lock:
            return len(self._tracked)

    # -- inbox side ------------------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish the moves a crash interrupted: a file whose terminal record exists is not submitted again."""
        for path in sorted(self.inbox.iterdir()):
            if not is_candidate(path):
                continue
            digest = sha256_file(path)
            for folder in (self.routed, self.dead_letter):
                sidecar = folder / f"{path.name}{SIDECAR_SUFFIX}"
                if sidecar.is_file() and _sidecar_digest(sidecar) == digest:
                    os.replace(path, folder / path.name)
                    logger.info("finished moving %s to %s after a restart", path.name, folder.name)
                    break

    def scan_once(self) -> int:
        """Submit the files that are new and no longer growing; returns how many were submitted."""
        submitted = 0
        for path in sorted(self.inbox.iterdir()):
            if path in self._tracked_paths or not is_candidate(path):
                continue
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._sizes.get(path) != signature:
                self._sizes[path] = signature  # still being written, or first sight: look again next scan
                continue
            self._sizes.pop(path, None)
            self.submit(path)
            submitted += 1
        return submitted

    def submit(self, path: Path) -> Tracked:
        digest = sha256_file(path)
        key = path.name
        with path.open("rb") as body:
            answer = self._s3.put_object(
                Bucket=self._settings.names.inbox_bucket, Key=key, Body=body, Metadata={"sha256": digest}
            )
        tracked = Tracked(
            path=path,
            sha256=digest,
            key=key,
            etag=str(answer["ETag"]).strip('"'),
            version_id=answer.get("VersionId"),
        )
        with self._lock:
            self._tracked[(key, tracked.version_id or tracked.etag)] = tracked
            self._tracked_paths.add(path)
            self.counts.submitted += 1
        return tracked

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self.scan_once()
            except Exception:
                logger.exception("scanning %s failed; retrying", self.inbox)
            self._stopping.wait(SCAN_INTERVAL_SECONDS)

    # -- outcome side ----------------------------------------------------------------------------------

    def settle_once(self, wait_seconds: int = 1) -> int:
        messages = self._sqs.receive_message(
            QueueUrl=self._outcomes_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        ).get("Messages", [])
        for message in messages:
            try:
                event = json.loads(message["Body"])
            except ValueError:
                event = {}
            record = outcome_record(event, self._settings) if isinstance(event, dict) else None
            if record is not None:
                self._settle_record(record)
            self._sqs.delete_message(QueueUrl=self._outcomes_queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(messages)

    def _settle_record(self, record: dict[str, Any]) -> None:
        request = record.get("request") or {}
        identity = (str(request.get("key")), str(request.get("version_id") or request.get("etag")))
        with self._lock:
            tracked = self._tracked.pop(identity, None)
        if tracked is None:
            return  # an object not submitted from this folder (another client, or an earlier run)
        destination_folder = self.routed if record["status"] == "routed" else self.dead_letter
        destination = _free_name(destination_folder, tracked.path.name)
        record = {**record, "file": tracked.path.name, "sha256": tracked.sha256}
        write_json_atomically(destination_folder / f"{destination.name}{SIDECAR_SUFFIX}", record)
        os.replace(tracked.path, destination)
        with self._lock:
            self._tracked_paths.discard(tracked.path)
            if record["status"] == "routed":
                self.counts.routed += 1
            else:
                self.counts.dead_lettered += 1
        if self._on_settled is not None:
            self._on_settled(destination, record)

    def _settle(self) -> None:
        while not self._stopping.is_set():
            try:
                self.settle_once()
            except Exception:
                if self._stopping.is_set():
                    return
                logger.exception("reading outcomes failed; retrying")
                self._stopping.wait(0.5)


def _sidecar_digest(sidecar: Path) -> str | None:
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def _free_name(folder: Path, name: str) -> Path:
    """``name`` in ``folder``, or ``stem.N.suffix`` when an earlier file of that name is already there."""
    candidate = folder / name
    counter = 1
    while candidate.exists() or (folder / f"{candidate.name}{SIDECAR_SUFFIX}").exists():
        stem, dot, suffix = name.partition(".")
        candidate = folder / (f"{stem}.{counter}{dot}{suffix}" if dot else f"{name}.{counter}")
        counter += 1
    return candidate
