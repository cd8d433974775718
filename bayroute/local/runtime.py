"""``bayroute up``: the local stack plus the inbox folder, in the foreground, with a state file.

The state file ``DIR/.bayroute/state.json`` lets other commands (``submit``, ``status``, ``dlq``) find the
running stack: its pid, the local AWS endpoint and the model endpoint.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bayroute.config import Settings
from bayroute.domain import utc_now
from bayroute.local.folder import InboxFolder, write_json_atomically
from bayroute.local.logs import send_logs_to
from bayroute.local.stack import LocalStack

STATE_DIR = ".bayroute"
STATE_FILE = "state.json"
LOG_FILE = "stack.log"


class StackNotRunning(RuntimeError):
    """No live ``bayroute up`` owns this folder."""


class StackAlreadyRunning(RuntimeError):
    """Another live ``bayroute up`` owns this folder."""


@dataclass(frozen=True)
class StackState:
    pid: int
    workdir: str
    aws_endpoint_url: str
    model_endpoint_url: str
    started_at: str
    inbox_bucket: str
    dead_letter_queue_url: str
    outcomes_queue_url: str
    state_machine_arn: str


def state_path(workdir: Path) -> Path:
    return workdir / STATE_DIR / STATE_FILE


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(workdir: Path) -> StackState:
    """The running stack of ``workdir``; raises StackNotRunning when there is none (or it died)."""
    path = state_path(workdir)
    try:
        state = StackState(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise StackNotRunning(
            f"no local stack runs in {workdir} (start one with `bayroute up --workdir {workdir}`)"
        ) from None
    except (ValueError, TypeError) as exc:
        raise StackNotRunning(f"unreadable state file {path}: {exc}") from exc
    if not _alive(state.pid):
        raise StackNotRunning(f"the local stack of {workdir} (pid {state.pid}) is no longer running")
    return state


@contextmanager
def running_stack(
    workdir: Path,
    settings: Settings,
    *,
    aws_port: int = 0,
    model_endpoint_port: int = 0,
    start_model_endpoint: bool = True,
    quiet: bool = False,
    on_settled: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Iterator[tuple[LocalStack, InboxFolder]]:
    """The stack and the inbox folder, started; stopped and the state file removed on exit.

    ``quiet`` sends the stack's own logs to ``DIR/.bayroute/stack.log`` instead of the console.
    """
    workdir = workdir.resolve()
    try:
        existing = read_state(workdir)
    except StackNotRunning:
        pass
    else:
        raise StackAlreadyRunning(f"a local stack already runs in {workdir} (pid {existing.pid})")
    stack = LocalStack(
        settings,
        aws_port=aws_port,
        model_endpoint_port=model_endpoint_port,
        start_model_endpoint=start_model_endpoint,
    )
    addresses = stack.start()
    restore_logs = send_logs_to(workdir / STATE_DIR / LOG_FILE) if quiet else None
    folder: InboxFolder | None = None
    state_file = state_path(workdir)
    try:
        assert stack.resources is not None
        folder = InboxFolder(
            workdir,
            stack.settings,
            stack.client("s3"),
            stack.client("sqs"),
            stack.resources.outcomes_queue_url,
            on_settled=on_settled,
        )
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state = StackState(
            pid=os.getpid(),
            workdir=str(workdir),
            aws_endpoint_url=addresses.aws_endpoint_url,
            model_endpoint_url=addresses.model_endpoint_url,
            started_at=utc_now(),
            inbox_bucket=settings.names.inbox_bucket,
            dead_letter_queue_url=stack.resources.dead_letter_queue_url,
            outcomes_queue_url=stack.resources.outcomes_queue_url,
            state_machine_arn=stack.resources.state_machine_arn,
        )
        write_json_atomically(state_file, asdict(state))
        folder.start()
        yield stack, folder
    finally:
        if folder is not None:
            folder.stop()
        state_file.unlink(missing_ok=True)
        stack.stop()
        if restore_logs is not None:
            restore_logs()


def wait_for_signal() -> str:
    """Block until SIGINT or SIGTERM; returns the signal's name. Main thread only."""
    received: list[str] = []
    done = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        done.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0]
