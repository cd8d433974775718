"""Monitoring commands: the report, alarms, on-call notifications, ground-truth labels and threshold advice.

Mount in ``bayroute.cli``::

    app.add_typer(monitor.app, name="monitor")            # bayroute monitor report ...
    app.command("alarms")(monitor.alarms)                  # bayroute alarms
    app.command("oncall")(monitor.oncall)                  # bayroute oncall [--webhook URL]
    app.command("feedback")(monitor.feedback)              # bayroute feedback LABELS.csv
    app.add_typer(monitor.threshold_app, name="threshold") # bayroute threshold advise --precision 0.99

``--workdir DIR`` addresses the local stack running there (``bayroute up --workdir DIR``): its capture bucket,
alarms and on-call queue in moto. ``--capture`` reads capture files of any SageMaker endpoint, from a folder
(``aws s3 sync`` output) or ``s3://bucket/prefix`` (default AWS credentials, or ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bayroute.config import Settings, load_settings
from bayroute.monitoring.alarms import ALARM_HISTORY_PREFIX, S3AlarmHistory
from bayroute.monitoring.feedback import (
    LABELS_PREFIX,
    Label,
    LabelsFormatError,
    advise_threshold,
    join_labels,
    live_quality,
    parse_labels_csv,
    read_s3_labels,
)
from bayroute.monitoring.monitor import baselines_from_model
from bayroute.monitoring.records import Observation, ReadTally, parse_s3_url, read_local_capture, read_s3_capture
from bayroute.monitoring.report import ReportInput, write_report
from bayroute.monitoring.stats import Baseline

app = typer.Typer(help="Monitoring of captured inferences.", no_args_is_help=True)
threshold_app = typer.Typer(help="The routing threshold.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

LOCAL_REGION = "us-east-1"
WEBHOOK_TIMEOUT_SECONDS = 10.0

WorkdirOption = Annotated[
    Path | None, typer.Option("--workdir", help="Folder of a running `bayroute up` (default: the current folder).")
]
CaptureOption = Annotated[
    str | None,
    typer.Option(
        "--capture", help="Capture files instead of a running stack: a folder, a .jsonl file or s3://bucket/prefix."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


@dataclass(frozen=True)
class LocalStackClients:
    """boto3 clients for the moto server of the stack running in a folder."""

    endpoint_url: str

    def client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=LOCAL_REGION,
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(retries={"total_max_attempts": 1}),
        )


def _stack(workdir: Path) -> LocalStackClients:
    from bayroute.local.runtime import StackNotRunning, read_state

    try:
        return LocalStackClients(read_state(workdir.resolve()).aws_endpoint_url)
    except StackNotRunning as exc:
        raise _fail(f"{exc}; or read capture files with --capture PATH|s3://bucket/prefix") from exc


@dataclass
class Sources:
    """What a command read: the observations, how reading went, where from, and the stack's clients if any."""

    observations: list[Observation]
    tally: ReadTally
    description: str
    client: Callable[[str], Any] | None = None


def _read_sources(settings: Settings, workdir: Path | None, capture: str | None) -> Sources:
    if workdir is not None and capture is not None:
        raise _fail("give --workdir or --capture, not both")
    size, pixels = settings.model_input_size, settings.limits.max_image_pixels
    if capture is None:
        stack = _stack(workdir or Path("."))
        bucket = settings.names.capture_bucket
        observations, tally = read_s3_capture(
            stack.client("s3"), bucket, settings.prefixes.capture, input_size=size, max_pixels=pixels
        )
        return Sources(observations, tally, f"local stack in {(workdir or Path('.')).resolve()}", stack.client)
    if capture.startswith("s3://"):
        import boto3

        bucket, prefix = parse_s3_url(capture)
        observations, tally = read_s3_capture(boto3.client("s3"), bucket, prefix, input_size=size, max_pixels=pixels)
        return Sources(observations, tally, capture)
    try:
        observations, tally = read_local_capture(Path(capture), input_size=size, max_pixels=pixels)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from exc
    return Sources(observations, tally, str(Path(capture).resolve()))


def _baselines(settings: Settings, model: Path | None) -> dict[str, Baseline]:
    path = model or settings.model_path
    if not path.is_file():
        if model is not None:
            raise _fail(f"no model file at {model}")
        return {}
    return baselines_from_model(path)


def _labels(sources: Sources, settings: Settings, labels_csv: Path | None) -> list[Label] | None:
    """Labels from the stack's ``labels/`` prefix and from ``labels_csv``; None when there are none at all."""
    found: list[Label] = []
    if sources.client is not None:
        found += read_s3_labels(sources.client("s3"), settings.names.capture_bucket, LABELS_PREFIX)
    if labels_csv is not None:
        try:
            found += parse_labels_csv(labels_csv.read_text(encoding="utf-8"), source=str(labels_csv))
        except (OSError, LabelsFormatError) as exc:
            raise _fail(str(exc)) from exc
    return found or None


def _alarms(client: Callable[[str], Any], settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cloudwatch = client("cloudwatch")
    alarms = [
        alarm
        for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"])
        for alarm in page.get("MetricAlarms", [])
    ]
    history = S3AlarmHistory(client("s3"), settings.names.capture_bucket, ALARM_HISTORY_PREFIX)
    return alarms, history.transitions()


def stack_report(
    client: Callable[[str], Any],
    settings: Settings,
    out: Path,
    *,
    description: str = "local stack",
    labels_csv: Path | None = None,
    window_seconds: int | None = None,
) -> dict[str, Any]:
    """The report of a running stack (``client(service)`` gives its boto3 clients, as ``LocalStack.client`` does):
    its captured inferences, alarms and their history, and labels; returns the summary with the files' paths."""
    observations, tally = read_s3_capture(
        client("s3"),
        settings.names.capture_bucket,
        settings.prefixes.capture,
        input_size=settings.model_input_size,
        max_pixels=settings.limits.max_image_pixels,
    )
    sources = Sources(observations, tally, description, client)
    return _write(sources, settings, out, threshold=settings.threshold, labels_csv=labels_csv, window=window_seconds)


def _write(
    sources: Sources,
    settings: Settings,
    out: Path,
    *,
    threshold: float,
    labels_csv: Path | None,
    window: int | None,
    model: Path | None = None,
) -> dict[str, Any]:
    found_labels = _labels(sources, settings, labels_csv)
    alarms, history = _alarms(sources.client, settings) if sources.client is not None else ([], [])
    data = ReportInput(
        observations=sources.observations,
        tally=sources.tally,
        threshold=threshold,
        source=sources.description,
        baselines=_baselines(settings, model),
        alarms=alarms,
        alarm_history=history,
        feedback=join_labels(sources.observations, found_labels) if found_labels else None,
        window_seconds=window,
    )
    return write_report(data, out)


@app.command("report")
def report(
    out: Annotated[Path, typer.Option("--out", help="Folder for report.png and report.html.", file_okay=False)],
    workdir: WorkdirOption = None,
    capture: CaptureOption = None,
    as_json: JsonOption = False,
    threshold: Annotated[float | None, typer.Option(help="Routing threshold (default: the settings').")] = None,
    model: Annotated[
        Path | None, typer.Option(help="Model whose drift baseline applies (default: the served model).")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (event_id or object_key, label) to join.")] = None,
    window: Annotated[int | None, typer.Option(help="Window in seconds (default: chosen from the span).")] = None,
) -> None:
    """Write OUT/report.png and a self-contained OUT/report.html from captured inferences."""
    settings = load_settings()
    sources = _read_sources(settings, workdir, capture)
    routing_threshold = settings.threshold if threshold is None else threshold
    summary = _write(sources, settings, out, threshold=routing_threshold, labels_csv=labels, window=window, model=model)
    if as_json:
        print(json.dumps(summary, default=str))
        return
    console.print(
        f"{summary['records']} records ({summary['skipped_lines']} lines skipped), "
        f"below threshold {summary['below_threshold_share']}, class mix {summary['class_mix']}"
    )
    console.print(f"report: {summary['report']['html']}")


def _state_style(state: str) -> str:
    return {"ALARM": "red", "OK": "green"}.get(state, "yellow")


def alarms(
    workdir: WorkdirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the alarms of the stack running in WORKDIR: states, and their changes so far."""
    stack = _stack(workdir or Path("."))
    current, history = _alarms(stack.client, load_settings())
    if as_json:
        print(
            json.dumps(
                {
                    "alarms": [
                        {
                            "name": a["AlarmName"],
                            "state": a["StateValue"],
                            "reason": a.get("StateReason"),
                            "updated": str(a.get("StateUpdatedTimestamp")),
                            "metric": f"{a['Namespace']}/{a['MetricName']}",
                        }
                        for a in current
                    ],
                    "history": history,
                }
            )
        )
        return
    table = Table(title="Alarms")
    for column in ("alarm", "state", "since", "metric", "reason"):
        table.add_column(column)
    for alarm in current:
        state = str(alarm["StateValue"])
        table.add_row(
            alarm["AlarmName"],
            f"[{_state_style(state)}]{state}[/]",
            str(alarm.get("StateUpdatedTimestamp", "")),
            f"{alarm['Namespace']}/{alarm['MetricName']}",
            escape(str(alarm.get("StateReason", "")))[:120],
        )
    console.print(table)
    if history:
        changes = Table(title="State changes")
        for column in ("when", "alarm", "from", "to", "notified"):
            changes.add_column(column)
        for change in history:
            changes.add_row(
                change["changed_at"],
                change["alarm_name"],
                change["old_state"],
                f"[{_state_style(change['new_state'])}]{change['new_state']}[/]",
                str(len(change["notified"])),
            )
        console.print(changes)


def _post(url: str, body: Mapping[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
        response.read()


def _notifications(sqs: Any, queue_url: str) -> list[tuple[dict[str, Any], str]]:
    """Every message in the queue as (SNS envelope, receipt handle), oldest first.

    Messages are received hidden, so that each receive returns new ones, until none is left; the caller makes
    them visible again (``_release``) unless it consumes them.
    """
    found: dict[str, tuple[dict[str, Any], str]] = {}
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60).get(
        "Messages", []
    ):
        for message in batch:
            found[message["MessageId"]] = (json.loads(message["Body"]), message["ReceiptHandle"])
    return sorted(found.values(), key=lambda item: str(item[0].get("Timestamp")))


def _release(sqs: Any, queue_url: str, receipts: list[str]) -> None:
    """Make received messages visible again at once: showing notifications consumes none."""
    for start in range(0, len(receipts), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": 0}
            for i, receipt in enumerate(receipts[start : start + 10])
        ]
        sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)


def oncall(
    workdir: WorkdirOption = None,
    webhook: Annotated[
        str | None,
        typer.Option(
            help="POST each notification here as JSON (a 'text' line plus the alarm message); "
            "delivered ones leave the queue."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the on-call notifications (alarm state changes) that the stack in WORKDIR received."""
    settings = load_settings()
    stack = _stack(workdir or Path("."))
    sqs = stack.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=settings.names.oncall_queue)["QueueUrl"]
    notifications = _notifications(sqs, queue_url)
    rows = []
    kept = [receipt for _, receipt in notifications]
    try:
        for envelope, receipt in notifications:
            message = json.loads(envelope["Message"])
            text = f"{message['NewStateValue']}: {message['AlarmName']} — {message['NewStateReason']}"
            rows.append({"subject": envelope.get("Subject"), "received": envelope.get("Timestamp"), "message": message})
            if webhook is not None:
                try:
                    _post(webhook, {"text": text, "subject": envelope.get("Subject"), "message": message})
                except (urllib.error.URLError, OSError) as exc:
                    raise _fail(f"webhook {webhook} refused the notification: {exc}", code=1) from exc
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
                kept.remove(receipt)
    finally:
        _release(sqs, queue_url, kept)
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"On-call notifications ({len(rows)})")
    for column in ("received", "alarm", "change", "reason"):
        table.add_column(column)
    for row in rows:
        message = row["message"]
        state = str(message["NewStateValue"])
        table.add_row(
            str(row["received"]),
            message["AlarmName"],
            f"{message['OldStateValue']} → [{_state_style(state)}]{state}[/]",
            escape(str(message["NewStateReason"]))[:140],
        )
    console.print(table)
    if webhook is not None:
        console.print(f"delivered {len(rows)} notification(s) to {webhook}")


def feedback(
    labels_csv: Annotated[
        Path, typer.Argument(help="CSV with 'label' and 'event_id' or 'object_key'.", exists=True, dir_okay=False)
    ],
    workdir: WorkdirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Store human labels with the stack in WORKDIR and show live accuracy and precision of routed requests."""
    settings = load_settings()
    try:
        text = labels_csv.read_text(encoding="utf-8")
        parsed = parse_labels_csv(text, source=str(labels_csv))
    except (OSError, UnicodeDecodeError, LabelsFormatError) as exc:
        raise _fail(str(exc)) from exc
    sources = _read_sources(settings, workdir, None)
    assert sources.client is not None  # no --capture: the stack's
    s3 = sources.client("s3")
    key = f"{LABELS_PREFIX}{labels_csv.name}"
    s3.put_object(Bucket=settings.names.capture_bucket, Key=key, Body=text.encode("utf-8"), ContentType="text/csv")
    stored = read_s3_labels(s3, settings.names.capture_bucket, LABELS_PREFIX)
    joined = join_labels(sources.observations, stored)
    result = {
        "stored": f"s3://{settings.names.capture_bucket}/{key}",
        "labels_in_file": len(parsed),
        **joined.to_dict(),
        **live_quality(joined.matched, settings.threshold),
    }
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title="Ground truth", show_header=False)
    for name, value in result.items():
        table.add_row(name, "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@threshold_app.command("advise")
def advise(
    precision: Annotated[float, typer.Option(help="Precision the routed requests must keep.", min=0.5, max=1.0)] = 0.99,
    workdir: WorkdirOption = None,
    capture: CaptureOption = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV to join (besides the stack's labels/).")] = None,
    as_json: JsonOption = False,
) -> None:
    """The threshold with the most automation that keeps PRECISION on labelled inferences, with its evidence."""
    settings = load_settings()
    sources = _read_sources(settings, workdir, capture)
    found = _labels(sources, settings, labels)
    if not found:
        raise _fail("no labels: add some with `bayroute feedback LABELS.csv` or pass --labels", code=1)
    joined = join_labels(sources.observations, found)
    advice = advise_threshold(
        joined.matched,
        precision,
        current_threshold=settings.threshold,
        all_confidences=[o.confidence for o in sources.observations if o.confidence is not None],
    )
    advice["labels"] = joined.to_dict()
    if as_json:
        print(json.dumps(advice))
        return
    table = Table(title=f"Threshold for precision {precision}", show_header=False)
    for name, value in advice.items():
        table.add_row(name, escape(json.dumps(value) if isinstance(value, dict) else str(value)))
    console.print(table)
