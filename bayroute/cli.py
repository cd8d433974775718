"""``bayroute``: the command line (typer + rich). Commands parse options and call the package; no logic here."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bayroute.commands import data as data_commands
from bayroute.commands import monitor as monitor_commands
from bayroute.commands.batch import batch_app
from bayroute.commands.dlq import dlq_app
from bayroute.commands.evaluate import evaluate_command
from bayroute.commands.predict import predict_command
from bayroute.commands.serve import serve_command
from bayroute.config import load_settings
from bayroute.local.folder import DEAD_LETTER, INBOX, ROUTED, SIDECAR_SUFFIX, is_candidate

app = typer.Typer(
    name="bayroute",
    help="Classify arriving delivery vehicles and route drivers to their loading bay.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_commands.app, name="data")
app.command("evaluate")(evaluate_command)
app.command("predict")(predict_command)
app.command("serve")(serve_command)
app.add_typer(dlq_app, name="dlq")
app.add_typer(batch_app, name="batch")
app.add_typer(monitor_commands.app, name="monitor")
app.add_typer(monitor_commands.threshold_app, name="threshold")
app.command("alarms")(monitor_commands.alarms)
app.command("oncall")(monitor_commands.oncall)
app.command("feedback")(monitor_commands.feedback)
# Piped output (CI logs, `| tee`) gets a readable width instead of rich's 80-column default.
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True)

WorkdirOption = Annotated[
    Path, typer.Option("--workdir", help="Folder holding inbox/, routed/ and dead-letter/.", file_okay=False)
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _outcome_row(record: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """(outcome, class, confidence, bay, reason) of a sidecar record."""
    if record.get("status") == "routed":
        confidence = f"{float(record.get('confidence') or 0):.3f}"
        return "[green]routed[/green]", str(record.get("class")), confidence, str(record.get("bay")), ""
    confidence = "" if record.get("confidence") is None else f"{float(record['confidence']):.3f}"
    return "[yellow]dead-lettered[/yellow]", str(record.get("class") or ""), confidence, "", str(record.get("reason"))


def _record_name(record: dict[str, Any]) -> str:
    return str(record.get("file") or record.get("object_key"))


def _outcome_table(records: list[dict[str, Any]], expected: dict[str, str] | None = None) -> Table:
    table = Table(title="Outcomes")
    columns = ["object", *(["expected"] if expected else []), "outcome", "class", "confidence", "bay", "reason"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for record in sorted(records, key=_record_name):
        name = _record_name(record)
        table.add_row(name, *([expected.get(name, "")] if expected else []), *_outcome_row(record))
    return table


@app.command()
def up(
    workdir: WorkdirOption = Path("."),
    aws_port: Annotated[int, typer.Option(help="Loopback port of the local AWS endpoint (0: any free port).")] = 0,
    endpoint_port: Annotated[int, typer.Option(help="Loopback port of the model endpoint (0: any free port).")] = 0,
) -> None:
    """Run the local stack in the foreground: route every file that appears in WORKDIR/inbox/."""
    from bayroute.local.runtime import StackAlreadyRunning, running_stack, wait_for_signal
    from bayroute.local.stack import AwsProcessFailed, StackPortUnavailable

    def report(destination: Path, record: dict[str, Any]) -> None:
        console.print(" | ".join([_record_name(record), *(cell for cell in _outcome_row(record) if cell)]))

    try:
        with running_stack(
            workdir,
            load_settings(),
            aws_port=aws_port,
            model_endpoint_port=endpoint_port,
            quiet=True,
            on_settled=report,
        ) as (stack, folder):
            console.print(
                f"bayroute is up: drop images into [bold]{folder.inbox}[/bold]; "
                f"local AWS at {stack.aws_endpoint_url}, model at {stack.settings.endpoint_url}. Ctrl-C stops."
            )
            signal_name = wait_for_signal()
            console.print(
                f"{signal_name} received: stopping ({folder.pending()} object(s) still in flight stay in "
                "the inbox and are submitted again on the next start)"
            )
    except (StackAlreadyRunning, StackPortUnavailable, AwsProcessFailed) as exc:
        raise _fail(str(exc)) from exc


def _read_sidecars(workdir: Path, names: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for folder in (ROUTED, DEAD_LETTER):
        for name in names:
            sidecar = workdir / folder / f"{name}{SIDECAR_SUFFIX}"
            if sidecar.is_file():
                found[name] = json.loads(sidecar.read_text(encoding="utf-8"))
    return found


@app.command()
def submit(
    paths: Annotated[list[Path], typer.Argument(help="Image files to route.", exists=True, dir_okay=False)],
    workdir: WorkdirOption = Path("."),
    wait: Annotated[bool, typer.Option(help="Wait for every file's outcome and print it.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcomes.")] = 120.0,
) -> None:
    """Copy files into the inbox of the stack running in WORKDIR (and wait for their outcomes)."""
    from bayroute.local.runtime import StackNotRunning, read_state

    try:
        read_state(workdir.resolve())
    except StackNotRunning as exc:
        raise _fail(str(exc)) from exc
    inbox = workdir / INBOX
    names = set()
    for path in paths:
        partial = inbox / f".{path.name}.part"
        shutil.copyfile(path, partial)
        partial.replace(inbox / path.name)  # appears whole: the watcher never sees half a file
        names.add(path.name)
    console.print(f"submitted {len(names)} file(s) to {inbox}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    outcomes = _read_sidecars(workdir, names)
    while len(outcomes) < len(names) and time.monotonic() < deadline:
        time.sleep(0.2)
        outcomes = _read_sidecars(workdir, names)
    console.print(_outcome_table(list(outcomes.values())))
    if len(outcomes) < len(names):
        raise _fail(f"{len(names) - len(outcomes)} file(s) had no outcome after {timeout:.0f} s", code=1)


@app.command()
def status(workdir: WorkdirOption = Path("."), as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the stack running in WORKDIR: folders, queues, endpoint health."""
    import boto3
    from botocore.config import Config

    from bayroute.local.runtime import StackNotRunning, read_state

    try:
        state = read_state(workdir.resolve())
    except StackNotRunning as exc:
        raise _fail(str(exc)) from exc
    sqs = boto3.client(
        "sqs",
        endpoint_url=state.aws_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}),
    )

    def depth(url: str) -> int:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    try:
        with urllib.request.urlopen(f"{state.model_endpoint_url}/ping", timeout=2) as response:
            endpoint_healthy = response.status == 200
    except OSError:
        endpoint_healthy = False
    report = {
        "pid": state.pid,
        "started_at": state.started_at,
        "aws_endpoint_url": state.aws_endpoint_url,
        "model_endpoint_url": state.model_endpoint_url,
        "model_endpoint_healthy": endpoint_healthy,
        "files": {
            folder: sum(1 for p in (workdir / folder).iterdir() if is_candidate(p) and not p.name.endswith(".json"))
            for folder in (INBOX, ROUTED, DEAD_LETTER)
        },
        "dead_letter_queue_depth": depth(state.dead_letter_queue_url),
    }
    if as_json:
        print(json.dumps(report))
        return
    table = Table(title=f"bayroute in {state.workdir}", show_header=False)
    for key, value in report.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


@app.command()
def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Folder to run in (default: a new temporary folder, removed after).")
    ] = None,
    per_class: Annotated[int, typer.Option(help="Real images of each class in the batch.")] = 10,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every outcome.")] = 90.0,
    report_dir: Annotated[Path, typer.Option(help="Where the monitoring report of the run is written.")] = Path(
        "demo-report"
    ),
) -> None:
    """The main job, end to end on the local default: start the stack, route a mixed batch, stop."""
    from bayroute.local.demo import DemoDataMissing, demo_batch
    from bayroute.local.runtime import running_stack

    try:
        batch = demo_batch(per_class=per_class)
    except DemoDataMissing as exc:
        raise _fail(str(exc)) from exc
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="bayroute-demo-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    settled: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with running_stack(
            root, load_settings(), quiet=True, on_settled=lambda _path, record: settled.append(record)
        ) as (
            stack,
            folder,
        ):
            console.print(f"local stack up in {time.monotonic() - started:.1f} s; submitting {len(batch)} files")
            for item in batch:
                partial = folder.inbox / f".{item.name}.part"
                partial.write_bytes(item.content)
                partial.replace(folder.inbox / item.name)
            deadline = time.monotonic() + timeout
            while len(settled) < len(batch) and time.monotonic() < deadline:
                time.sleep(0.1)
            counts = folder.counts
            summary = monitor_commands.stack_report(stack.client, stack.settings, report_dir, description="make demo")
        console.print(_outcome_table(settled, {item.name: item.expected for item in batch}))
        console.print(
            f"submitted {len(batch)} = routed {counts.routed} + dead-lettered {counts.dead_lettered}"
            f"   ({time.monotonic() - started:.1f} s in all)"
        )
        console.print(f"monitoring report: {summary['report']['html']} (and report.png beside it)")
        if counts.routed + counts.dead_lettered != len(batch):
            raise _fail(f"{len(batch) - len(settled)} object(s) reached no terminal state in {timeout:.0f} s", 1)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(
    context: typer.Context,
    on: Annotated[str, typer.Option("--on", help="local (this machine: CPU, or CUDA when present) or sagemaker.")] = (
        "local"
    ),
) -> None:
    """Train the classifier here (`--data DIR --out models/NAME`) or submit a SageMaker job (`--on sagemaker`).

    Options after --on are those of the chosen target: see `bayroute train --on local --help` and
    `bayroute train --on sagemaker --help`.
    """
    from bayroute.commands.cloud_train import cloud_train_command
    from bayroute.commands.train import train_command

    targets: dict[str, Callable[..., None]] = {"local": train_command, "sagemaker": cloud_train_command}
    if on not in targets:
        raise typer.BadParameter(f"must be one of {', '.join(targets)}", param_hint="--on")
    target = typer.Typer(add_completion=False)
    target.command()(targets[on])
    target(args=context.args, prog_name=f"bayroute train --on {on}", standalone_mode=True)


if __name__ == "__main__":
    app()
