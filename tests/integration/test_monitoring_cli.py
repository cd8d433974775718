"""The monitoring commands: the report from capture files and from a running stack, alarms, on-call, labels.

The stack is the local runtime's (``running_stack``, moto server and state file, no model endpoint) with the
monitoring resources provisioned and one local monitor pass run; the commands reach it through its state file.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import typer
from typer.testing import CliRunner

from bayroute.capture import CaptureWriter
from bayroute.commands import monitor
from bayroute.config import load_settings
from bayroute.local.monitoring import LocalMonitor, provision_monitoring
from bayroute.local.runtime import read_state, running_stack
from tests.unit.test_monitoring_records import bayroute_line, foreign_line, gray_image

cli = typer.Typer()
cli.add_typer(monitor.app, name="monitor")
cli.command("alarms")(monitor.alarms)
cli.command("oncall")(monitor.oncall)
cli.command("feedback")(monitor.feedback)
cli.add_typer(monitor.threshold_app, name="threshold")
runner = CliRunner()

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
# (event id, object key, probabilities): confident and right, confident and wrong, unsure.
INFERENCES = [
    *[(f"ok-{i}", f"yard/ok-{i}.png", [0.01, 0.99]) for i in range(8)],
    ("wrong", "yard/wrong.png", [0.97, 0.03]),
    ("unsure", "yard/unsure.png", [0.4, 0.6]),
]


def invoke(*args: str) -> Any:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = tmp_path_factory.mktemp("site")
    settings = load_settings()
    with running_stack(workdir, settings, start_model_endpoint=False) as (stack, _folder):
        assert stack.session is not None
        provision_monitoring(stack.session, stack.settings)
        names = stack.settings.names
        writer = CaptureWriter(
            stack.client("s3"),
            names.capture_bucket,
            stack.settings.prefixes.capture,
            names.endpoint_name,
            names.endpoint_variant,
        )
        for i, (event_id, key, probabilities) in enumerate(INFERENCES):
            when = NOW - timedelta(minutes=3, seconds=i)
            writer.write(json.loads(bayroute_line(probabilities, event_id=event_id, when=when, object_key=key)), when)
        LocalMonitor(stack.session, stack.settings, baselines={}).run_once(NOW)
        yield workdir


def test_report_of_a_running_stack_shows_its_records_and_alarms(stack_dir: Path, tmp_path: Path) -> None:
    summary = invoke("monitor", "report", "--workdir", str(stack_dir), "--out", str(tmp_path), "--json")
    assert summary["records"] == len(INFERENCES)
    assert summary["below_threshold_share"] == pytest.approx(0.1)
    assert summary["class_mix"] == {"bicycle": 0.1, "motorcycle": 0.9}
    assert {a["state"] for a in summary["alarms"]} == {"OK"} and len(summary["alarms"]) == 6
    assert (tmp_path / "report.png").is_file() and (tmp_path / "report.html").is_file()


def test_the_demo_writes_the_same_report_from_the_stack_object(stack_dir: Path, tmp_path: Path) -> None:
    clients = monitor.LocalStackClients(read_state(stack_dir).aws_endpoint_url)
    summary = monitor.stack_report(clients.client, load_settings(), tmp_path, description="demo")
    assert (summary["source"], summary["records"]) == ("demo", len(INFERENCES))
    assert summary["report"]["html"] == str(tmp_path / "report.html")


def test_alarms_shows_states_and_their_history(stack_dir: Path) -> None:
    shown = invoke("alarms", "--workdir", str(stack_dir), "--json")
    assert {a["name"]: a["state"] for a in shown["alarms"]}["bayroute-drift"] == "OK"
    assert {(h["old_state"], h["new_state"]) for h in shown["history"]} == {("INSUFFICIENT_DATA", "OK")}
    assert "bayroute-drift" in invoke("alarms", "--workdir", str(stack_dir))


def test_feedback_stores_labels_and_threshold_advice_uses_them(stack_dir: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    rows = [f"{key},motorcycle" for _, key, _ in INFERENCES]  # "wrong" was called a bicycle
    labels.write_text("object_key,label\n" + "\n".join(rows) + "\nyard/unknown.png,bicycle\n")
    stored = invoke("feedback", str(labels), "--workdir", str(stack_dir), "--json")
    assert (stored["labels"], stored["matched"], stored["unmatched"]) == (11, 10, 1)
    assert stored["routed_labelled"] == 9 and stored["precision"] == pytest.approx(8 / 9)
    advice = invoke("threshold", "advise", "--precision", "0.95", "--workdir", str(stack_dir), "--json")
    assert advice["recommended_threshold"] == pytest.approx(0.99)
    assert advice["recommended"]["precision"] == 1.0
    assert advice["current"]["precision"] == pytest.approx(8 / 9)


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_oncall_shows_notifications_and_hands_them_to_a_webhook(stack_dir: Path) -> None:
    shown = invoke("oncall", "--workdir", str(stack_dir), "--json")
    assert len(shown) == 6 and {n["message"]["NewStateValue"] for n in shown} == {"OK"}
    assert invoke("oncall", "--workdir", str(stack_dir), "--json") == shown  # showing consumes nothing
    # More than one receive's worth (10): the same notifications again, as a flapping alarm would send them.
    sns = monitor.LocalStackClients(read_state(stack_dir).aws_endpoint_url).client("sns")
    topic_name = load_settings().names.oncall_topic
    topic = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f":{topic_name}"))
    for notification in shown:
        sns.publish(TopicArn=topic, Subject=notification["subject"], Message=json.dumps(notification["message"]))
    assert len(invoke("oncall", "--workdir", str(stack_dir), "--json")) == 12
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        invoke("oncall", "--workdir", str(stack_dir), "--webhook", url)
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Hook.received) == 12
    assert _Hook.received[0]["text"].startswith("OK: bayroute-")
    assert _Hook.received[0]["message"]["Trigger"]["Namespace"]
    assert invoke("oncall", "--workdir", str(stack_dir), "--json") == []  # delivered ones left the queue


def test_report_of_any_endpoints_capture_files_counts_what_it_skips(tmp_path: Path) -> None:
    hour = tmp_path / "capture" / "their-endpoint" / "AllTraffic" / "2022" / "02" / "14" / "21"
    hour.mkdir(parents=True)
    lines = [foreign_line(f"[{1 - p}, {p}]", event_id=f"e{i}") for i, p in enumerate((0.99, 0.97, 0.6, 0.3))]
    (hour / "19-08-123-a.jsonl").write_text("".join(lines[:2]) + "{truncated\n")
    (hour / "19-09-001-b.jsonl").write_text(
        "".join(lines[2:]) + foreign_line("0.4", output_type="text/csv", encoding="CSV")
    )
    summary = invoke(
        "monitor", "report", "--capture", str(tmp_path / "capture"), "--out", str(tmp_path / "out"), "--json"
    )
    assert (summary["records"], summary["observations"], summary["skipped_lines"]) == (5, 5, 1)
    assert summary["outputs_unrecognized"] == 1
    assert summary["below_threshold_share"] == 0.5  # 0.6 and 0.7 of four scored
    assert summary["class_mix"] == {"class_0": 0.25, "class_1": 0.75}
    assert summary["alarms"] == []
    # The served model's baseline applies to its own version only: another endpoint's records are not compared.
    assert [d["records"] for d in summary["drift"].values()] == [0]


def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["monitor", "report", "--workdir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no local stack runs" in result.output
    both = runner.invoke(cli, ["monitor", "report", "--workdir", ".", "--capture", ".", "--out", str(tmp_path)])
    assert both.exit_code == 2 and "not both" in both.output
    missing = runner.invoke(cli, ["monitor", "report", "--capture", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "no capture file or folder" in missing.output
    labels = tmp_path / "labels.csv"
    labels.write_text("id,class\n1,bicycle\n")
    bad = runner.invoke(cli, ["feedback", str(labels), "--workdir", str(tmp_path)])
    assert bad.exit_code == 2 and "header must name" in bad.output


def test_a_single_capture_file_makes_a_report_too(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(bayroute_line([0.2, 0.8], image=gray_image(30)))
    summary = invoke("monitor", "report", "--capture", str(path), "--out", str(tmp_path / "out"), "--json")
    assert summary["records"] == 1 and summary["class_mix"] == {"motorcycle": 1.0}
