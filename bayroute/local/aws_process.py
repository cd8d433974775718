"""The local stack's AWS process: moto's storage and messaging services, on the stack's public port.

Started by ``LocalStack`` (``python -m bayroute.local.aws_process``); see ``relay.py`` for why the stack is
two processes. This process answers S3, SQS, DynamoDB, EventBridge, SNS and CloudWatch itself, over HTTP for
other processes and over its relay socket for the workflow process, and relays the Step Functions and Lambda
requests that reach its port to the workflow process. The stack binds the port and hands this process the
listening socket, so that the port is known (and any error about it raised) before this process has started.
It prints ``ready PORT`` once it takes requests and exits when its standard input closes, so it never outlives
the stack that started it; on its way out it removes the relay folder, which a killed stack would leave behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.serving import BaseWSGIServer, make_server

from bayroute.local import fastpath
from bayroute.local.relay import RelayClient, RelayServer, RoutingApp, is_workflow_request

LOOPBACK = "127.0.0.1"
READY_PREFIX = "ready "
AWS_SOCKET = "aws.sock"  # this process's relay server, in the relay folder
WORKFLOW_SOCKET = "workflow.sock"  # the workflow process's


class QuietRequestHandler(MotoRequestHandler):
    """moto's request handler without an access-log line per request (thousands per batch)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def command(listening_fd: int, relay_dir: str | Path) -> list[str]:
    """The command line that starts this process (``listening_fd`` must be passed to it)."""
    return [sys.executable, "-m", "bayroute.local.aws_process", f"--fd={listening_fd}", f"--relay-dir={relay_dir}"]


def http_server(app: Any, listening_fd: int) -> BaseWSGIServer:
    """moto's threaded HTTP server, quiet, on a socket already listening (the one-process stack uses it too)."""
    return make_server(LOOPBACK, 0, app, threaded=True, request_handler=QuietRequestHandler, fd=listening_fd)


def _is_aws_request(environ: dict[str, Any]) -> bool:
    return not is_workflow_request(environ)


def serve(listening_fd: int, relay_dir: Path) -> None:
    """Serve until standard input closes."""
    # Ctrl-C reaches the whole process group: the stack decides when this process ends, by closing its input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fastpath.apply_to_services()  # moto's per-request caches; this process runs no interpreter, makes no calls
    moto_app = fastpath.moto_application()
    RelayServer(str(relay_dir / AWS_SOCKET), moto_app).start()
    app = RoutingApp(moto_app, RelayClient(str(relay_dir / WORKFLOW_SOCKET)), is_local=_is_aws_request)
    server = http_server(app, listening_fd)
    threading.Thread(target=server.serve_forever, name="moto", daemon=True).start()
    print(f"{READY_PREFIX}{server.port}", flush=True)
    sys.stdin.buffer.read()  # returns at EOF: the stack stopped, or its process died
    shutil.rmtree(relay_dir, ignore_errors=True)
    # Nothing here outlives the process (moto's state is the stack's, and the stack is gone): no orderly
    # shutdown of the servers, whose polling loops would each take up to half a second to notice.
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="a listening TCP socket, inherited from the stack")
    parser.add_argument(
        "--relay-dir",
        type=Path,
        required=True,
        help=f"the folder of the relay sockets ({AWS_SOCKET}, {WORKFLOW_SOCKET})",
    )
    arguments = parser.parse_args(argv)
    serve(arguments.fd, arguments.relay_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
