"""The local embedded stack: moto as AWS, the Lambda handlers in-process, our model endpoint server.

No Docker, no account, one port. moto provides S3, SQS, SNS, EventBridge, CloudWatch, DynamoDB and runs
``infra/statemachine/workflow.asl.json`` with its Step Functions interpreter; the Lambda Invoke API on the
same port runs the very handlers that AWS runs (see ``lambda_api``). Two facts of moto shape the rest:
EventBridge delivers only to SQS targets (so inbox events reach ingest through a queue that the dispatcher
polls, as a Lambda event source mapping would), and its interpreter reaches every service at
``http://localhost:$MOTO_PORT``.

By default the stack is two processes, so that it can use two cores: this one (the workflow process: Step
Functions, the Lambda Invoke API and the handlers, the dispatcher, the model endpoint) and a child that owns
moto's storage and messaging services and the public port (``aws_process``); each relays the other's
requests (``relay``). ``aws_process=False`` keeps everything in this process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from werkzeug.serving import BaseWSGIServer

from bayroute.config import Settings
from bayroute.local import aws_process, fastpath
from bayroute.local.aws_process import AWS_SOCKET, READY_PREFIX, WORKFLOW_SOCKET
from bayroute.local.dispatcher import SqsDispatcher
from bayroute.local.lambda_api import REGION, Handler, LambdaInvokeMiddleware, LocalFunction
from bayroute.local.monitoring import LocalMonitor
from bayroute.local.provision import Resources, provision
from bayroute.local.relay import RelayClient, RelayServer, RoutingApp, is_workflow_request

LOOPBACK = "127.0.0.1"
logger = logging.getLogger(__name__)


def default_handlers(settings: Settings) -> dict[str, Handler]:
    """The deployed functions' handlers, by function name (imported here: they read env at import)."""
    from services.infer.handler import handler as infer
    from services.ingest.handler import handler as ingest
    from services.serialize.handler import handler as serialize
    from services.threshold.handler import handler as threshold

    names = settings.names
    return {
        names.ingest_function: ingest,
        names.serialize_function: serialize,
        names.infer_function: infer,
        names.threshold_function: threshold,
    }


@dataclass(frozen=True)
class StackAddresses:
    aws_endpoint_url: str
    model_endpoint_url: str


class StackInProcess(RuntimeError):
    """A second local stack in one process: the handlers' environment would belong to both."""


class AwsProcessFailed(RuntimeError):
    """The local stack's AWS process did not start."""


class StackPortUnavailable(OSError):
    """The port asked for the local stack's AWS endpoint cannot be listened on (another program has it)."""


def _listen(port: int) -> socket.socket:
    try:
        return socket.create_server((LOOPBACK, port))
    except OSError as exc:
        raise StackPortUnavailable(
            exc.errno, f"cannot listen on {LOOPBACK}:{port} for the local stack: {exc.strerror}"
        ) from None


class LocalStack:
    """Start with ``start()`` (or as a context manager); ``stop()`` undoes everything, environment included.

    One per process: the in-process handlers read their settings and AWS endpoint from the environment,
    as deployed functions do, and a process has one environment.
    """

    _running: LocalStack | None = None
    _running_lock = threading.Lock()

    def __init__(
        self,
        settings: Settings,
        *,
        aws_port: int = 0,
        handlers: Mapping[str, Handler] | None = None,
        start_model_endpoint: bool = True,
        model_endpoint_port: int = 0,
        monitoring: bool = True,
        aws_process: bool = True,
    ) -> None:
        self.settings = settings
        self._aws_port = aws_port
        self._handlers = handlers
        self._start_model_endpoint = start_model_endpoint
        self._model_endpoint_port = model_endpoint_port
        self._monitoring = monitoring
        self._use_aws_process = aws_process
        self._aws_url: str | None = None
        self._server: BaseWSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._aws_child: subprocess.Popen[bytes] | None = None
        self._relay_server: RelayServer | None = None
        self._relay_dir: str | None = None
        self._model_server: Any = None
        self._dispatcher: SqsDispatcher | None = None
        self._monitor: LocalMonitor | None = None
        self._saved_env: dict[str, str | None] = {}
        self.functions: dict[str, LocalFunction] = {}
        self.resources: Resources | None = None
        self.session: boto3.Session | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> StackAddresses:
        with LocalStack._running_lock:
            if LocalStack._running is not None:
                raise StackInProcess("a local stack already runs in this process; stop it first")
            LocalStack._running = self
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> StackAddresses:
        # The AWS process takes seconds to import moto: start it first, on a port bound here, and do this
        # process's own start-up (the model endpoint, the handlers' imports) meanwhile. The middleware needs
        # the function table before the server takes requests, and the handlers read the environment when
        # imported: so the port comes first, then the environment, then the handlers.
        listener = _listen(self._aws_port)
        self._aws_url = f"http://{LOOPBACK}:{listener.getsockname()[1]}"
        try:
            if self._use_aws_process:
                aws_relay = self._start_aws_process(listener)
            else:
                self._server = aws_process.http_server(_LateBoundApp(), listener.fileno())
        finally:
            listener.close()  # the server (here or in the AWS process) listens on its own copy
        model_url = self._start_model_server() if self._start_model_endpoint else self.settings.endpoint_url
        self.settings = self.settings.with_endpoint_url(model_url)
        aws_url = self.aws_endpoint_url
        self._set_environment(aws_url)
        handlers = self._handlers if self._handlers is not None else default_handlers(self.settings)
        self.functions = {name: LocalFunction(name, handler) for name, handler in handlers.items()}
        own_app = LambdaInvokeMiddleware(fastpath.moto_application(), self.functions)
        app: fastpath.WsgiApp
        if self._relay_server is not None:
            self._relay_server.app = own_app
            app = RoutingApp(own_app, aws_relay, is_local=is_workflow_request)
        else:
            assert self._server is not None
            app = self._server.app = own_app
            self._server_thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
            self._server_thread.start()
        # moto's own request handling dominates the local pipeline: cache what it recomputes per call, and
        # serve this process's AWS calls in process instead of over loopback TCP.
        fastpath.serve_in_process(aws_url, app, self.functions)
        if self._aws_child is not None:
            self._wait_for_aws_process()
        # moto's backends live as long as the process: start each stack from an empty account.
        reset_moto(aws_url)
        run_state_machines(aws_url, True)

        self.session = boto3.Session(region_name=REGION)
        self.resources = provision(self.session, self.settings)
        if self._monitoring:
            # moto never evaluates alarms: this thread runs the monitor and evaluates them as CloudWatch would.
            self._monitor = LocalMonitor(self.session, self.settings).start()
        ingest = self.functions.get(self.settings.names.ingest_function)
        if ingest is not None:
            self._dispatcher = SqsDispatcher(
                self.session.client("sqs"),
                self.resources.ingest_queue_url,
                ingest,
                self.session.region_name,
                self.settings.ingest_batch_size,
            )
            self._dispatcher.start()
        return StackAddresses(aws_endpoint_url=aws_url, model_endpoint_url=model_url)

    def _start_aws_process(self, listener: socket.socket) -> RelayClient:
        """Start this process's relay server and the AWS process, which serves ``listener``; the client reaches
        the AWS process once it is ready (``_wait_for_aws_process``)."""
        self._relay_dir = tempfile.mkdtemp(prefix="bayroute-stack-")
        self._relay_server = RelayServer(os.path.join(self._relay_dir, WORKFLOW_SOCKET), _LateBoundApp()).start()
        self._aws_child = subprocess.Popen(
            aws_process.command(listener.fileno(), self._relay_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(listener.fileno(),),
            env=_same_package_environment(),
        )
        return RelayClient(os.path.join(self._relay_dir, AWS_SOCKET))

    def _wait_for_aws_process(self) -> None:
        child = self._aws_child
        assert child is not None and child.stdout is not None
        line = child.stdout.readline().decode("utf-8", "replace").strip()
        if not line.startswith(READY_PREFIX):
            code = child.wait(timeout=10)
            raise AwsProcessFailed(
                f"the local stack's AWS process exited ({code}) before taking requests (its error is above)"
            )
        threading.Thread(target=self._watch_aws_process, args=(child,), name="aws-process-watch", daemon=True).start()

    def _watch_aws_process(self, child: subprocess.Popen[bytes]) -> None:
        """Say so, loudly, if the AWS process ends while the stack runs: every AWS call fails from then on."""
        code = child.wait()
        if self._aws_child is child:  # not stopping
            logger.error(
                "the local stack's AWS process (pid %d) exited with %s: S3, SQS, DynamoDB, EventBridge, SNS and"
                " CloudWatch calls fail until the stack is restarted",
                child.pid,
                code,
            )

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if self._dispatcher is not None:
            self._dispatcher.stop()
            self._dispatcher = None
        if self._aws_url is not None:
            fastpath.stop_serving_in_process(self._aws_url)
        if self._server is not None:
            if self._server_thread is not None:
                self._server.shutdown()
                self._server_thread.join(timeout=10)
            self._server.server_close()
            self._server = None
        self._stop_aws_process()
        self._aws_url = None
        if self._model_server is not None:
            self._model_server.stop()
            self._model_server = None
        self._restore_environment()
        with LocalStack._running_lock:
            if LocalStack._running is self:
                LocalStack._running = None

    def _stop_aws_process(self) -> None:
        child, self._aws_child = self._aws_child, None
        if child is not None:
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()  # the AWS process exits when its standard input closes
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._relay_server is not None:
            self._relay_server.stop()
            self._relay_server = None
        if self._relay_dir is not None:
            shutil.rmtree(self._relay_dir, ignore_errors=True)
            self._relay_dir = None

    # -- pieces ----------------------------------------------------------------------------------------

    @property
    def aws_endpoint_url(self) -> str:
        if self._aws_url is None:
            raise RuntimeError("the local stack is not running")
        return self._aws_url

    @property
    def aws_process_id(self) -> int | None:
        """The AWS process's pid while it runs; None for the one-process stack."""
        return None if self._aws_child is None else self._aws_child.pid

    def client(self, service: str) -> Any:
        if self.session is None:
            raise RuntimeError("the local stack is not running")
        return self.session.client(service)

    def _start_model_server(self) -> str:
        from bayroute.endpoint_server import ModelServer
        from bayroute.model.onnx_model import OnnxClassifier
        from bayroute.serving import server_model_threads

        model = OnnxClassifier(self.settings.model_path, intra_op_threads=server_model_threads())
        self._model_server = ModelServer(
            model, LOOPBACK, self._model_endpoint_port, max_request_bytes=self.settings.limits.max_request_bytes
        )
        self._model_server.start()
        return str(self._model_server.url)

    def _set_environment(self, aws_url: str) -> None:
        port = aws_url.rsplit(":", 1)[1]
        values = {
            **local_aws_environment(aws_url),
            "MOTO_PORT": port,
            # Local handlers log and count, but X-Ray and CloudWatch EMF have nowhere to go.
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
            **self.settings.to_env(),
        }
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_environment(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()


def _same_package_environment() -> dict[str, str]:
    """This process's environment, with the folder this ``bayroute`` came from first on the import path, so that
    the AWS process runs the same code (a checkout run in place, beside an installed copy, included)."""
    import bayroute

    package_root = str(Path(bayroute.__file__).resolve().parent.parent)
    inherited = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root if not inherited else f"{package_root}{os.pathsep}{inherited}"}


class _LateBoundApp:
    """Placeholder WSGI app until the real one is attached; answers 503 if called too early."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"local stack starting"]


def local_aws_environment(aws_url: str) -> dict[str, str]:
    """The variables that point an AWS SDK (and the handlers) at the moto server at ``aws_url``."""
    return {
        "AWS_ENDPOINT_URL": aws_url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def reset_moto(aws_url: str) -> None:
    """Empty every backend of the moto server at ``aws_url`` (they are the whole process's)."""
    _post_json(f"{aws_url}/moto-api/reset", {})


def run_state_machines(aws_url: str, enabled: bool) -> None:
    """Whether moto's Step Functions interpreter runs executions, or only records them (a process-wide setting)."""
    _post_json(f"{aws_url}/moto-api/config", {"stepfunctions": {"execute_state_machine": enabled}})


def _post_json(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
