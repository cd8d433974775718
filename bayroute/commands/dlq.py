"""``bayroute dlq list|show|replay``: the dead-letter queue of the local stack (``--workdir``) or of AWS.

With ``--profile`` or ``--region`` the commands address the deployed stack (names from the settings);
otherwise the local stack that ``bayroute up --workdir DIR`` runs (default: the current folder). The logic
is :mod:`bayroute.replay`; these commands parse options and print. Mount with
``app.add_typer(dlq_app, name="dlq")``.

Exit codes: 0; 1 when ``show`` finds nothing or ``replay`` left a selected message in the queue (its start
failed, its object is gone, or it cannot be read); 2 for bad options or no stack to talk to.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bayroute.config import load_settings
from bayroute.replay import (
    DeadLetter,
    DeadLetterTarget,
    ReplayOutcome,
    ReplayReport,
    Selection,
    aws_target,
    find_dead_letters,
    list_dead_letters,
    local_target,
    parse_since,
)

dlq_app = typer.Typer(
    name="dlq",
    help="The dead-letter queue: list, show and replay what the workflow could not route.",
    no_args_is_help=True,
)
_T = TypeVar("_T")
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from exc


WorkdirOption = Annotated[
    Path | None,
    typer.Option(
        "--workdir", help="Folder of the local stack (`bayroute up --workdir`); default: here.", file_okay=False
    ),
]
ProfileOption = Annotated[str | None, typer.Option("--profile", help="AWS profile: use the deployed stack.")]
RegionOption = Annotated[str | None, typer.Option("--region", help="AWS region: use the deployed stack.")]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Only this reason code (e.g. endpoint_unavailable).")
]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Only failures since an ISO 8601 time or an age (90s, 15m, 2h, 3d).")
]
LimitOption = Annotated[int | None, typer.Option("--limit", min=1, help="At most N messages, oldest failure first.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _target(workdir: Path | None, profile: str | None, region: str | None) -> DeadLetterTarget:
    from bayroute.local.runtime import StackNotRunning

    if workdir is not None and (profile or region):
        raise _fail("--workdir (the local stack) and --profile/--region (AWS) exclude each other")
    try:
        if profile or region:
            return aws_target(load_settings(), profile=profile, region=region)
        return local_target(workdir or Path("."))
    except StackNotRunning as exc:
        raise _fail(str(exc)) from exc
    except (BotoCoreError, ClientError) as exc:
        raise _fail(f"cannot reach the dead-letter queue: {exc}") from exc


def _talking_to(target: DeadLetterTarget, action: Callable[[], _T]) -> _T:
    """Run ``action``; an AWS error (credentials, permissions, the stack gone) ends the command with its message."""
    try:
        return action()
    except (BotoCoreError, ClientError) as exc:
        raise _fail(f"{target.description}: {exc}") from exc


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _letters_table(letters: list[DeadLetter], title: str) -> Table:
    table = Table(title=title)
    for column in ("failed at", "object", "attempt", "step", "reason", "detail", "message id"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        failed_at = letter.failed_at.isoformat(timespec="seconds") if letter.failed_at else ""
        if letter.entry is None:
            table.add_row(
                failed_at, "", "", "", "[red]unreadable[/red]", escape(letter.problem or ""), letter.message_id
            )
            continue
        entry = letter.entry
        table.add_row(
            failed_at,
            escape(entry.request.object.key),
            str(entry.attempt),
            entry.step,
            entry.reason,
            escape(entry.detail[:200]),
            letter.message_id,
        )
    return table


def _print_json(document: Any) -> None:
    print(json.dumps(document, ensure_ascii=False))


@dlq_app.command("list")
def list_command(
    workdir: WorkdirOption = None,
    profile: ProfileOption = None,
    region: RegionOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    limit: LimitOption = None,
    as_json: JsonOption = False,
) -> None:
    """List dead-lettered objects, oldest failure first (the queue is left as it was)."""
    selection = Selection(reason=reason, since=_since(since), limit=limit)
    target = _target(workdir, profile, region)
    scan = _talking_to(target, lambda: list_dead_letters(target.queue(), selection))
    if as_json:
        _print_json(scan.to_dict())
        return
    console.print(_letters_table(scan.selected, f"Dead letters: {target.description}"))
    console.print(f"{len(scan.selected)} selected of {scan.scanned} message(s) in the queue")


@dlq_app.command("show")
def show_command(
    wanted: Annotated[str, typer.Argument(metavar="ID", help="Message id, object key, identity or execution.")],
    workdir: WorkdirOption = None,
    profile: ProfileOption = None,
    region: RegionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show every message of one object (or one message): reason, cause, times, the original request."""
    target = _target(workdir, profile, region)
    scan = _talking_to(target, lambda: find_dead_letters(target.queue(), wanted))
    if as_json:
        _print_json(scan.to_dict() | {"messages": [m.to_dict(full=True) for m in scan.selected]})
    else:
        for letter in scan.selected:
            table = Table(title=f"message {letter.message_id}", show_header=False)
            for key, value in letter.to_dict(full=True).items():
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                table.add_row(key, escape(text))
            console.print(table)
    if not scan.selected:
        raise _fail(f"no dead-letter message matches {wanted!r} (of {scan.scanned} in the queue)", code=1)


@dlq_app.command("replay")
def replay_command(
    workdir: WorkdirOption = None,
    profile: ProfileOption = None,
    region: RegionOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    limit: LimitOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be replayed; change nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Start the workflow again for the selected objects; each message is deleted once its new run is accepted."""
    selection = Selection(reason=reason, since=_since(since), limit=limit)
    target = _target(workdir, profile, region)
    report = _talking_to(target, lambda: target.replayer().replay(selection, dry_run=dry_run))
    if as_json:
        _print_json(report.to_dict())
    else:
        console.print(_report_table(report, target.description))
        counts = ", ".join(f"{name} {number}" for name, number in report.counts().items()) or "nothing selected"
        console.print(f"{len(report.results)} selected of {report.scanned} message(s): {counts}")
    if report.kept:
        raise typer.Exit(1)


def _report_table(report: ReplayReport, description: str) -> Table:
    title = f"{'Dry run: ' if report.dry_run else ''}replay on {description}"
    table = Table(title=title)
    for column in ("object", "reason", "attempt", "outcome", "execution", "detail"):
        table.add_column(column, overflow="fold")
    colours = {
        ReplayOutcome.START_FAILED: "red",
        ReplayOutcome.OBJECT_MISSING: "yellow",
        ReplayOutcome.UNREADABLE: "red",
    }
    for result in report.results:
        row = result.to_dict()
        colour = colours.get(result.outcome)
        outcome = f"[{colour}]{result.outcome}[/{colour}]" if colour else str(result.outcome)
        table.add_row(
            escape(row["object_key"] or row["message_id"]),
            row["reason"],
            str(row["attempt"] or ""),
            outcome,
            row["execution"] or "",
            escape(row["detail"] or ""),
        )
    return table
