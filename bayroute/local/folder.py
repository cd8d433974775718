"""The user's inbox as a folder: ``DIR/inbox/`` in, ``DIR/routed/`` and ``DIR/dead-letter/`` out.

Each new file in the inbox folder is put into the inbox bucket; when its object reaches a terminal state
(a ``VehicleClassified`` or ``ObjectDeadLettered`` event on the outcomes queue), a JSON sidecar is written
beside its destination first and only then is the file moved out of the inbox. A crash therefore loses
nothing: on start, a file whose sidecar already exists (same content digest) only finishes its move, and
every other file still in the inbox is submitted again.

A dead-lettered object can be replayed (``bayroute dlq replay``) while the stack runs. When its new outcome
arrives, the file already in ``dead-letter/`` follows it: routed, it moves to ``routed/`` with a new sidecar
whose ``previous`` list keeps the earlier records (the new sidecar is written first, then the file moves,
then the old sidecar goes; ``recover`` finishes an interrupted promotion); dead-lettered again, its sidecar
is rewritten in place with the same history.
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
# In a routed sidecar: the file's name in dead-letter/ before a replay routed it.
PROMOTED_FROM = "promoted_from"


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
        # Dead-lettered files of this run, by object identity: a replay may route them later.
        self._dead_lettered: dict[tuple[str, str], Path] = {}
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
        self._finish_inbox_moves()
        self._finish_promotions()

    def _finish_inbox_moves(self) -> None:
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

    def _finish_promotions(self) -> None:
        """A routed sidecar whose file is still in ``dead-letter/``: move the file, then drop its old sidecar."""
        promoted: dict[str, str] = {}  # dead-letter file name -> its sha256, for every finished promotion
        for sidecar in sorted(self.routed.glob(f"*{SIDECAR_SUFFIX}")):
            destination = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
            record = _read_record(sidecar)
            source_name = record.get(PROMOTED_FROM) if record else None
            if not isinstance(source_name, str) or not record:
                continue
            source = self.dead_letter / source_name
            if not destination.exists() and source.is_file() and sha256_file(source) == record.get("sha256"):
                os.replace(source, destination)
                logger.info("finished moving replayed %s to %s after a restart", source_name, ROUTED)
            if destination.exists():
                promoted[source_name] = str(record.get("sha256"))
        for source_name, digest in promoted.items():
            old_sidecar = self.dead_letter / f"{source_name}{SIDECAR_SUFFIX}"
            if not (self.dead_letter / source_name).exists() and _sidecar_digest(old_sidecar) == digest:
                old_sidecar.unlink()

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
            settled = self._dead_lettered.get(identity) if tracked is None else None
        if settled is not None:
            self._settle_again(identity, settled, record)
            return
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
                self._dead_lettered[identity] = destination
        if self._on_settled is not None:
            self._on_settled(destination, record)

    def _settle_again(self, identity: tuple[str, str], path: Path, record: dict[str, Any]) -> None:
        """A new outcome for a file already in ``dead-letter/`` (its object was replayed)."""
        sidecar = path.with_name(f"{path.name}{SIDECAR_SUFFIX}")
        if not path.is_file():
            with self._lock:
                self._dead_lettered.pop(identity, None)
            return  # someone took the file out of dead-letter/: nothing left to move
        earlier = _read_record(sidecar) or {}
        history = [*earlier.pop("previous", []), earlier]
        record = {
            **record,
            "file": earlier.get("file", path.name),
            "sha256": earlier.get("sha256"),
            "previous": history,
        }
        if record["status"] != "routed":
            write_json_atomically(sidecar, record)
            destination = path
        else:
            destination = _free_name(self.routed, path.name)
            record[PROMOTED_FROM] = path.name
            write_json_atomically(self.routed / f"{destination.name}{SIDECAR_SUFFIX}", record)
            os.replace(path, destination)
            sidecar.unlink()
            with self._lock:
                self._dead_lettered.pop(identity, None)
                self.counts.dead_lettered -= 1
                self.counts.routed += 1
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


def _read_record(sidecar: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _sidecar_digest(sidecar: Path) -> str | None:
    value = (_read_record(sidecar) or {}).get("sha256")
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
