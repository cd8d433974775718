"""``bayroute.local.fastpath`` against the moto, werkzeug and botocore it patches: fails loudly when an upgrade
moves what it caches, or when the in-process transport stops seeing requests exactly as werkzeug's server does.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import jsonpath_ng.ext as jsonpath_ext
import pytest
from botocore.config import Config
from moto import mock_aws
from moto.core import errors
from moto.core import responses as moto_responses
from moto.core.errors import ErrorLookupFactory
from moto.core.utils import convert_to_flask_response, get_service_model
from moto.dynamodb.comparisons import ConditionExpressionParser, get_filter_expression
from moto.dynamodb.models.dynamo_type import Item
from moto.dynamodb.parsing import validators as dynamodb_validators
from moto.dynamodb.parsing.expressions import UpdateExpressionParser
from moto.events.utils import EventTemplateParser
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler
from moto.sqs.models import Queue, SQSBackend, sqs_backends
from moto.sqs.responses import SQSResponse
from moto.stepfunctions import parser as sfn_parser
from moto.stepfunctions.parser.asl.component.common.path import result_path
from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds
from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent
from moto.stepfunctions.parser.asl.component.state.exec.execute_state import ExecutionState
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
from moto.stepfunctions.parser.asl.utils import boto_client, json_path
from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
from werkzeug.serving import make_server

from bayroute.adapters.signed_s3 import Credentials, SignedS3Client
from bayroute.config import REPO_ROOT
from bayroute.local import fastpath
from bayroute.local.lambda_api import INVOKE_PATH, LambdaInvokeMiddleware, LocalFunction, function_arn
from bayroute.local.stack import run_state_machines

REGION = "us-east-1"
# Headers that differ between any two botocore calls (request ids, signing time).
VOLATILE = {"HTTP_AUTHORIZATION", "HTTP_X_AMZ_DATE", "HTTP_AMZ_SDK_INVOCATION_ID", "HTTP_AMZ_SDK_REQUEST"}
# moto's ExecutionState._evaluate_with_timeout from its output on (patch 13 repeats these steps).
MOTO_STEPS_AFTER_THE_STATE = """
        env.stack.append(execution_output)

        if not self._is_language_query_jsonpath():
            env.states.set_result(execution_output)

        if self.assign_decl:
            self.assign_decl.eval(env=env)

        if self.result_selector:
            self.result_selector.eval(env=env)

        if self.result_path:
            self.result_path.eval(env)
        else:
            res = env.stack.pop()
            env.states.reset(input_value=res)
"""


def _client(service: str, url: str) -> Any:
    session = boto3.session.Session(aws_access_key_id="ak", aws_secret_access_key="sk", region_name=REGION)
    return session.client(service, endpoint_url=url, config=Config(retries={"total_max_attempts": 1}))


class _Served:
    """A WSGI application behind werkzeug's threaded server with moto's request handler, as the local stack runs."""

    def __init__(self, app: Any) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Served:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        fastpath.stop_serving_in_process(self.url)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def applied() -> None:
    fastpath.apply()


def test_every_patched_place_is_still_where_moto_keeps_it() -> None:
    assert fastpath.is_applied()
    for name in fastpath.BOTO_CLIENT_MODULES:
        module = importlib.import_module(name)
        assert getattr(module.boto_client_for, "__bayroute_fastpath__", False), name
    # Every interpreter module that calls boto_client_for is covered (a new one would build clients per task).
    callers = set()
    for info in pkgutil.walk_packages(sfn_parser.__path__, prefix=f"{sfn_parser.__name__}."):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as source:
                if "boto_client_for" in source.read():
                    callers.add(info.name)
    assert callers == set(fastpath.BOTO_CLIENT_MODULES)
    original = boto_client.boto_client_for.__wrapped__  # type: ignore[attr-defined]
    assert list(inspect.signature(original).parameters) == ["region", "service", "state_credentials"]
    assert hasattr(boto_client, "botocore_stubber") and hasattr(boto_client, "moto_server_port")
    assert getattr(ExecutionWorker._get_evaluation_entrypoint, "__bayroute_fastpath__", False)
    entrypoint = ExecutionWorker._get_evaluation_entrypoint.__wrapped__  # type: ignore[attr-defined]
    assert "state_machine_details.definition" in inspect.getsource(entrypoint)
    assert getattr(DomainDispatcherApplication.get_backend_for_host, "__bayroute_fastpath__", False)
    assert getattr(json_path.parse, "__bayroute_fastpath__", False)
    assert getattr(result_path.parse, "__bayroute_fastpath__", False)
    assert json_path.parse("$.a.b") is json_path.parse("$.a.b")
    # EventBridge's target delivery imports jsonpath_ng.ext's parse at each call, from the module attribute.
    assert "from jsonpath_ng.ext import parse" in inspect.getsource(EventTemplateParser.parse)
    assert jsonpath_ext.parse("$.detail") is jsonpath_ext.parse("$.detail")
    # Error answers look their shape up through a new factory per call, hence the cache per service id.
    assert "ErrorLookupFactory().for_service(" in inspect.getsource(errors.get_error_model)
    assert getattr(ErrorLookupFactory.for_service, "__bayroute_fastpath__", False)
    # What call_action asks of the cached method names, and where the retention check and the copy live.
    assert "method_names_from_class(self.__class__)" in inspect.getsource(moto_responses.BaseResponse.call_action)
    assert getattr(moto_responses.method_names_from_class, "__bayroute_fastpath__", False)
    retention_check = SQSBackend.is_message_valid_based_on_retention_period
    assert getattr(retention_check, "__bayroute_fastpath__", False)
    assert '"MessageRetentionPeriod"' in inspect.getsource(retention_check.__wrapped__)  # type: ignore[attr-defined]
    assert "self.node_to_validate = deepcopy(expression)" in inspect.getsource(dynamodb_validators.Validator)
    assert dynamodb_validators.deepcopy is fastpath.copy_expression_tree
    # A send reads ContentBasedDeduplication through the attributes property, which FIFO queues alone have.
    send = SQSBackend.send_message
    assert getattr(send, "__bayroute_fastpath__", False)
    assert 'queue.attributes.get("ContentBasedDeduplication") == "true"' in inspect.getsource(send.__wrapped__)  # type: ignore[attr-defined]
    assert '"ContentBasedDeduplication"' in inspect.getsource(Queue).split("FIFO_ATTRIBUTES = [", 1)[1].split("]")[0]
    # 12: what FlasklessBackend runs in place of moto's Flask view (compared answer for answer in
    # test_flaskless_backends.py)
    view = inspect.getsource(convert_to_flask_response.__call__)
    assert "result = self.callback(request, request.raw_url, dict(request.headers))" in view
    assert "recorder._record_request(request)" in view
    assert (
        '"ContentBasedDeduplication"' not in inspect.getsource(Queue).split("BASE_ATTRIBUTES = [", 1)[1].split("]")[0]
    )
    attributes = inspect.getattr_static(Queue, "attributes")
    assert isinstance(attributes, property) and getattr(attributes.fget, "__bayroute_fastpath__", False)
    # The interpreter's Lambda tasks reach the function through this module global, by keyword.
    assert getattr(lambda_eval_utils._invoke_lambda_function, "__bayroute_fastpath__", False)
    invoke = lambda_eval_utils._invoke_lambda_function.__wrapped__  # type: ignore[attr-defined]
    assert list(inspect.signature(invoke).parameters) == ["parameters", "region", "state_credentials"]
    assert "_invoke_lambda_function(\n            parameters=parameters" in inspect.getsource(
        lambda_eval_utils.execute_lambda_function_integration
    )
    # 14: the condition's tokens come from its text alone, as named tuples.
    lexing = ConditionExpressionParser._lex_condition_expression
    assert getattr(lexing, "__bayroute_fastpath__", False)
    assert "remaining_expression = self.condition_expression" in inspect.getsource(lexing.__wrapped__)  # type: ignore[attr-defined]
    read_of_the_parser = set(re.findall(r"self\.(\w+)", inspect.getsource(ConditionExpressionParser._lex_one_node)))
    assert read_of_the_parser == {"Nonterminal", "Kind", "Node"}
    assert issubclass(ConditionExpressionParser.Node, tuple)
    assert "nodes = self._lex_condition_expression()" in inspect.getsource(ConditionExpressionParser.parse)
    # 13: the steps after moto's thread has run the state, which the inline evaluation repeats.
    evaluate = ExecutionState._evaluate_with_timeout
    assert getattr(evaluate, "__bayroute_fastpath__", False)
    moto_steps = inspect.getsource(evaluate.__wrapped__)  # type: ignore[attr-defined]
    assert "thread = Thread(target=_exec_and_notify, daemon=True)" in moto_steps
    assert "frame.stack = copy.deepcopy(env.stack)" in moto_steps
    assert moto_steps.split("execution_output = execution_outputs.pop()", 1)[1] == MOTO_STEPS_AFTER_THE_STATE
    assert TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS == 99999999


def test_error_answers_keep_their_codes_with_the_error_table_cached() -> None:
    s3 = botocore.session.Session().create_client("s3", region_name="us-east-1")
    model = s3.meta.service_model
    first = ErrorLookupFactory().for_service(model)
    assert ErrorLookupFactory().for_service(model) is first
    assert first.from_code("NoSuchKey") is not None and first.from_code("NoSuchKey").name == "NoSuchKey"
    # moto's own model of the same service gets its own table: it declares errors botocore's does not.
    assert first.from_code("PreconditionFailed") is None
    moto_table = ErrorLookupFactory().for_service(get_service_model("s3"))
    assert ErrorLookupFactory().for_service(get_service_model("s3")) is moto_table
    assert moto_table.from_code("PreconditionFailed").metadata["error"]["httpStatusCode"] == 412


def test_method_names_are_listed_once_per_class_and_are_the_same() -> None:
    original = moto_responses.method_names_from_class.__wrapped__  # type: ignore[attr-defined]
    assert moto_responses.method_names_from_class(SQSResponse) == original(SQSResponse)
    assert "receive_message" in moto_responses.method_names_from_class(SQSResponse)
    assert moto_responses.method_names_from_class(SQSResponse) is moto_responses.method_names_from_class(SQSResponse)


def test_the_retention_check_agrees_with_moto_on_either_side_of_the_retention_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = SQSBackend.is_message_valid_based_on_retention_period.__wrapped__  # type: ignore[attr-defined]
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="retained", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        for body in ("a", "b", "c"):
            sqs.send_message(QueueUrl=url, MessageBody=body)
        backend = sqs_backends["123456789012"][REGION]
        message = backend.get_queue("retained")._messages[0]
        sent = message.sent_timestamp / 1000
        verdicts = []
        for now in (sent + 1, sent + 59.5, sent + 60, sent + 61):
            # Both checks read the clock through the name their module imported.
            monkeypatch.setattr("moto.sqs.models.unix_time", lambda dt=None, now=now: now)
            monkeypatch.setattr(fastpath, "unix_time", lambda dt=None, now=now: now)
            verdicts.append(backend.is_message_valid_based_on_retention_period("retained", message))
            assert verdicts[-1] == original(backend, "retained", message)
        assert verdicts == [True, True, False, False]
        monkeypatch.undo()
        assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]] == list("abc")


def test_a_send_to_a_standard_queue_no_longer_counts_its_messages_and_answers_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted: list[str] = []
    counting = inspect.getattr_static(Queue, "approximate_number_of_messages")

    def count(queue: Any) -> int:
        counted.append(queue.name)
        return int(counting.fget(queue))

    monkeypatch.setattr(Queue, "approximate_number_of_messages", property(count))
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="backlog")["QueueUrl"]
        for index in range(20):
            sqs.send_message(QueueUrl=url, MessageBody=f"m{index}")
        assert counted == []
        backend = sqs_backends["123456789012"][REGION]
        SQSBackend.send_message.__wrapped__(backend, "backlog", "by moto's own send")  # type: ignore[attr-defined]
        assert counted == ["backlog"]  # moto's own send counts the queue on every message
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "21"  # every other reader still gets the counts
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert [m["Body"] for m in received] == [f"m{index}" for index in range(10)]
        # A FIFO queue still reads its attribute: content-based deduplication drops the second copy.
        fifo = sqs.create_queue(
            QueueName="orders.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
        )["QueueUrl"]
        for _ in range(2):
            sqs.send_message(QueueUrl=fifo, MessageBody="same", MessageGroupId="g")
        assert len(sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10)["Messages"]) == 1


def test_an_expression_tree_copy_is_equal_and_shares_no_node() -> None:
    tree = UpdateExpressionParser.make("SET #a = :a, #b = if_not_exists(#b, :zero) + :one REMOVE #c")
    copied = fastpath.copy_expression_tree(tree)
    assert _shape(copied) == _shape(tree)
    originals = {id(node) for node in _nodes(tree)}
    assert originals.isdisjoint(id(node) for node in _nodes(copied))
    # Anything that is not an expression tree is left to copy.deepcopy, memo included.
    value = {"k": [1, {"x": 2}]}
    assert fastpath.copy_expression_tree(value) == value and fastpath.copy_expression_tree(value)["k"] is not value["k"]


def _shape(value: Any) -> Any:
    """A tree's types and values, node for node (its nodes compare by identity; ``parent`` points back up)."""
    if isinstance(value, list | tuple):
        return [_shape(item) for item in value]
    if hasattr(value, "__dict__"):
        fields = {name: _shape(item) for name, item in vars(value).items() if name != "parent"}
        return (type(value).__name__, fields, type(getattr(value, "parent", None)).__name__)
    return value


def _nodes(tree: Any) -> list[Any]:
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        if hasattr(node, "children"):
            found.append(node)
            pending.extend(node.children or [])
    return found


def test_only_definitions_without_map_or_parallel_share_one_parsed_program() -> None:
    task = {
        "StartAt": "A",
        "States": {"A": {"Type": "Task", "Resource": "x", "Next": "B"}, "B": {"Type": "Pass", "End": True}},
    }
    parallel = {
        "StartAt": "P",
        "States": {
            "P": {
                "Type": "Parallel",
                "Branches": [{"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}],
                "End": True,
            }
        },
    }
    nested_map = {
        "StartAt": "C",
        "States": {
            "C": {"Type": "Choice", "Choices": [], "Default": "M"},
            "M": {
                "Type": "Map",
                "ItemProcessor": {"StartAt": "X", "States": {"X": {"Type": "Pass", "End": True}}},
                "End": True,
            },
        },
    }
    assert fastpath.shareable(json.dumps(task))
    assert not fastpath.shareable(json.dumps(parallel))
    assert not fastpath.shareable(json.dumps(nested_map))
    assert not fastpath.shareable("not json")


def _environ_capture() -> tuple[Any, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        seen.append({**{k: v for k, v in environ.items() if k.isupper() or k.startswith("moto.")}, "body": body})
        start_response("200 OK", [("Content-Type", "application/xml"), ("ETag", '"e"')])
        return [b""]

    return app, seen


def _relevant(environ: dict[str, Any]) -> dict[str, Any]:
    skip = VOLATILE | {"REMOTE_ADDR", "REMOTE_PORT", "SERVER_SOFTWARE"}
    return {k: v for k, v in environ.items() if k not in skip}


@pytest.mark.parametrize("key", ["plain.png", "a b+c/ü%2Fx.png", "dir//double?.jpg"], ids=["plain", "encoded", "odd"])
def test_the_application_sees_what_werkzeugs_server_would_have_given_it(key: str) -> None:
    app, seen = _environ_capture()
    with _Served(app) as served:
        s3 = _client("s3", served.url)

        def calls() -> None:
            s3.put_object(
                Bucket="bucket-1", Key=key, Body=b"\x89PNG body", Metadata={"under_score": "1", "dash-ed": "2"}
            )
            s3.list_objects_v2(Bucket="bucket-1", Prefix="a b+c/", MaxKeys=5)
            s3.delete_objects(Bucket="bucket-1", Delete={"Objects": [{"Key": key}]})

        calls()  # over the socket
        fastpath.serve_in_process(served.url, app)
        calls()  # in process
    over_http, in_process = seen[:3], seen[3:]
    assert len(in_process) == 3
    assert all(env["SERVER_SOFTWARE"] == "bayroute-in-process" for env in in_process)
    assert all(env["SERVER_SOFTWARE"] != "bayroute-in-process" for env in over_http)
    for socket_env, direct_env in zip(over_http, in_process, strict=True):
        assert _relevant(direct_env) == _relevant(socket_env)


@pytest.mark.parametrize(
    "key", ["plain.jsonl", "a b+c/ü%2Fx.jsonl", "dir//double?.jsonl"], ids=["plain", "encoded", "odd"]
)
def test_the_signed_s3_clients_puts_reach_the_application_as_over_the_socket(key: str) -> None:
    app, seen = _environ_capture()
    with _Served(app) as served:
        client = SignedS3Client(Credentials("ak", "sk"), REGION, served.url)

        def put() -> str | None:
            answer = client.put_object(Bucket="bucket-1", Key=key, Body=b'{"a": 1}\n', ContentType="application/jsonl")
            return answer["ETag"]

        assert put() == '"e"'  # over the socket
        fastpath.serve_in_process(served.url, app)
        assert put() == '"e"'  # in process
    over_http, in_process = seen
    assert in_process["SERVER_SOFTWARE"] == "bayroute-in-process" != over_http["SERVER_SOFTWARE"]
    assert _relevant(in_process) == _relevant(over_http)


@pytest.fixture
def moto_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, LocalFunction]]]:
    """moto's application with the Lambda Invoke API in front, as the local stack builds it, served and in process."""
    functions = {
        "double": LocalFunction("double", lambda event, _ctx: {"value": event["value"] * 2}),
        "refuse": LocalFunction("refuse", _refuse),
        "thread": LocalFunction("thread", _double_and_name_the_thread),
        "slow": LocalFunction("slow", lambda event, _ctx: time.sleep(1.5) or event),
    }
    app = LambdaInvokeMiddleware(fastpath.moto_application(), functions)
    with _Served(app) as served:
        monkeypatch.setenv("MOTO_PORT", str(served.server.server_port))
        _client("s3", served.url)  # (a session exists before registration, as in the stack)
        fastpath.serve_in_process(served.url, app, functions)
        yield served.url, functions


class NotAVehicle(ValueError):
    """A handler's named error: its class name is the error name the workflow's Catch sees."""


def _refuse(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    raise NotAVehicle(f"no vehicle in {event['key']}")


def _double_and_name_the_thread(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    if event["value"] < 0:
        raise NotAVehicle(f"no vehicle worth {event['value']}")
    return {"value": event["value"] * 2, "thread": threading.current_thread().name}  # names are never reused


def test_s3_and_sqs_answer_the_same_in_process_as_over_the_socket(moto_app: tuple[str, Any]) -> None:
    url, _ = moto_app

    def scenario(bucket: str) -> list[Any]:
        s3, sqs = _client("s3", url), _client("sqs", url)
        s3.create_bucket(Bucket=bucket)
        put = s3.put_object(Bucket=bucket, Key="k y+z.png", Body=b"0123456789", Metadata={"a_b": "c"})
        got = s3.get_object(Bucket=bucket, Key="k y+z.png", Range="bytes=2-5")
        with pytest.raises(s3.exceptions.ClientError) as missing:
            s3.head_object(Bucket=bucket, Key="absent")
        queue = sqs.create_queue(QueueName=f"{bucket}-q")["QueueUrl"]
        sqs.send_message(QueueUrl=queue, MessageBody="hello")
        message = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"][0]
        return [
            put["ETag"],
            got["Body"].read(),
            got["ContentRange"],
            got["Metadata"],
            missing.value.response["Error"]["Code"],
            message["Body"],
        ]

    in_process = scenario("in-process-bucket")
    fastpath.stop_serving_in_process(url)
    assert not fastpath.serving_in_process(url)
    assert scenario("socket-bucket") == in_process


def _one_task_machine(url: str, name: str, function: str, payload: dict[str, str]) -> tuple[Any, str, str]:
    """(Step Functions client, machine ARN, definition) of a machine that invokes ``function`` once."""
    definition = json.dumps(
        {
            "StartAt": "Call",
            "States": {
                "Call": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::lambda:invoke",
                    "Parameters": {"FunctionName": function_arn(function), "Payload": payload},
                    "ResultSelector": {"value.$": "$.Payload.value"},
                    "ResultPath": "$.result",
                    "Next": "Done",
                },
                "Done": {"Type": "Pass", "InputPath": "$.result", "End": True},
            },
        }
    )
    sfn = _client("stepfunctions", url)
    machine = sfn.create_state_machine(
        name=name, definition=definition, roleArn="arn:aws:iam::123456789012:role/r", type="EXPRESS"
    )["stateMachineArn"]
    return sfn, machine, definition


def _finished(sfn: Any, machine: str, name: str, value: dict[str, Any]) -> dict[str, Any]:
    arn = sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(value))["executionArn"]
    deadline = time.monotonic() + 30
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "the execution did not finish"
        time.sleep(0.05)
    return dict(described)


def _invoke_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Lambda Invoke requests that reach the stack's middleware from now on (paths)."""
    seen: list[str] = []
    middleware = LambdaInvokeMiddleware.__call__

    def counted(self: LambdaInvokeMiddleware, environ: dict[str, Any], start_response: Any) -> Any:
        if INVOKE_PATH.match(environ.get("PATH_INFO", "")):
            seen.append(environ["PATH_INFO"])
        return middleware(self, environ, start_response)

    monkeypatch.setattr(LambdaInvokeMiddleware, "__call__", counted)
    return seen


def test_the_interpreter_runs_in_process_with_one_program_and_one_client_per_service(
    moto_app: tuple[str, dict[str, LocalFunction]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, functions = moto_app
    run_state_machines(url, enabled=True)
    sfn, machine, definition = _one_task_machine(url, "fastpath-contract", "double", {"value.$": "$.value"})
    invoke_requests = _invoke_requests(monkeypatch)
    outputs = []
    for value in (2, 5):
        described = _finished(sfn, machine, f"run-{value}", {"value": value})
        assert described["status"] == "SUCCEEDED", described
        outputs.append(json.loads(described["output"]))
    assert outputs == [{"value": 4}, {"value": 10}]
    assert functions["double"].invocations == 2
    assert invoke_requests == []  # the tasks called the function directly, not through botocore and the middleware
    assert fastpath.program_cached(definition)  # parsed once, run twice
    assert "lambda" in fastpath.cached_client_services()


def test_a_direct_invoke_fails_with_the_error_name_and_cause_that_the_invoke_api_gives(
    moto_app: tuple[str, dict[str, LocalFunction]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, functions = moto_app
    run_state_machines(url, enabled=True)
    sfn, machine, _ = _one_task_machine(url, "fastpath-refuse", "refuse", {"key.$": "$.key"})
    invoke_requests = _invoke_requests(monkeypatch)
    direct = _finished(sfn, machine, "direct", {"key": "cat.png"})
    assert invoke_requests == []
    app = LambdaInvokeMiddleware(fastpath.moto_application(), functions)
    fastpath.stop_serving_in_process(url)
    fastpath.serve_in_process(url, app)  # the transport stays in process; invokes go through the Invoke API
    through_the_api = _finished(sfn, machine, "through-the-api", {"key": "cat.png"})
    assert len(invoke_requests) == 1
    assert direct["status"] == through_the_api["status"] == "FAILED"
    assert direct["error"] == through_the_api["error"] == "NotAVehicle"
    direct_cause, api_cause = json.loads(direct["cause"]), json.loads(through_the_api["cause"])
    assert direct_cause == api_cause
    assert direct_cause["errorType"] == "NotAVehicle" and direct_cause["errorMessage"] == "no vehicle in cat.png"
    assert functions["refuse"].errors == 2


def test_a_shared_program_has_every_heap_key_drawn_before_executions_use_it() -> None:
    # Executions keep a retrier's attempt count under its component's heap key, drawn on first use: two
    # executions drawing it at once would lose one's count. A shared program has them drawn up front.
    definition = (REPO_ROOT / "infra" / "statemachine" / "workflow.asl.json").read_text(encoding="utf-8")
    program = AmazonStateLanguageParser.parse(definition)[0]

    def components(root: Any) -> list[EvalComponent]:
        found, pending, seen = [], [root], set()
        while pending:
            node = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, EvalComponent):
                found.append(node)
            if hasattr(node, "__dict__") and not isinstance(node, type):
                pending.extend(vars(node).values())
            elif isinstance(node, list | tuple | dict):
                pending.extend(node.values() if isinstance(node, dict) else node)
        return found

    every = components(program)
    retriers = [c for c in every if type(c).__name__ == "MaxAttemptsDecl"]
    assert retriers, "the workflow's Retry blocks should parse into MaxAttemptsDecl components"
    assert not any("_EvalComponent__heap_key" in vars(c) for c in every)
    fastpath.fix_heap_keys(program)
    keys = {id(c): vars(c).get("_EvalComponent__heap_key") for c in every}
    assert all(keys.values()), [type(c).__name__ for c in every if not keys[id(c)]]
    assert all(c.heap_key == keys[id(c)] for c in every)


def _task(function: str, value_path: str, **fields: Any) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": function_arn(function), "Payload": {"value.$": value_path}},
        **fields,
    }


def test_tasks_without_a_timeout_run_in_their_executions_thread_and_end_as_in_their_own(
    moto_app: tuple[str, dict[str, LocalFunction]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = moto_app
    run_state_machines(url, enabled=True)
    selector = {"value.$": "$.Payload.value", "thread.$": "$.Payload.thread"}
    definition = {
        "StartAt": "First",
        "States": {
            "First": _task("thread", "$.value", ResultSelector=selector, ResultPath="$.first", Next="Second"),
            "Second": _task("thread", "$.first.value", ResultSelector=selector, ResultPath="$.second", End=True),
        },
    }
    sfn = _client("stepfunctions", url)
    machine = sfn.create_state_machine(
        name="fastpath-inline", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/r"
    )["stateMachineArn"]

    def run(tag: str) -> tuple[list[Any], set[str]]:
        """What each execution ended with (the threads left out), and the threads of the succeeded one."""
        ended, threads = [], set()
        for name, value in (("ok", 3), ("refused", -1)):
            described = _finished(sfn, machine, f"{tag}-{name}", {"value": value})
            output = json.loads(described.get("output") or "null")
            if output is not None:
                threads = {output["first"].pop("thread"), output["second"].pop("thread")}
            ended.append([described["status"], output, described.get("error"), described.get("cause")])
        return ended, threads

    inline, inline_threads = run("inline")
    monkeypatch.setattr(ExecutionState, "_evaluate_with_timeout", ExecutionState._evaluate_with_timeout.__wrapped__)  # type: ignore[attr-defined]
    threaded, threaded_threads = run("threaded")
    assert inline == threaded
    assert inline[0][:2] == ["SUCCEEDED", {"value": 3, "first": {"value": 6}, "second": {"value": 12}}]
    assert inline[1][:3] == ["FAILED", None, "NotAVehicle"]
    assert len(inline_threads) == 1  # both states in the execution's own thread
    assert len(threaded_threads) == 2  # moto's: a thread per state


def test_a_task_with_a_timeout_still_times_out(moto_app: tuple[str, dict[str, LocalFunction]]) -> None:
    url, _ = moto_app
    run_state_machines(url, enabled=True)
    definition = {"StartAt": "Slow", "States": {"Slow": _task("slow", "$.value", TimeoutSeconds=1, End=True)}}
    sfn = _client("stepfunctions", url)
    machine = sfn.create_state_machine(
        name="fastpath-timeout", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/r"
    )["stateMachineArn"]
    described = _finished(sfn, machine, "slow", {"value": 1})
    assert (described["status"], described["error"]) == ("FAILED", "States.Timeout")


CONDITIONS = [
    ("attribute_not_exists(#id) OR #expiry < :now", {"#id": "id", "#expiry": "expiration"}, {":now": {"N": "50"}}),
    ("attribute_not_exists(#id) OR #expiry < :now", {"#id": "id", "#expiry": "expiration"}, {":now": {"N": "500"}}),
    (
        "#status = :done AND size(#tags) BETWEEN :low AND :high",
        {"#status": "status", "#tags": "tags"},
        {":done": {"S": "COMPLETED"}, ":low": {"N": "1"}, ":high": {"N": "2"}},
    ),
    (
        "(#status IN (:a, :b)) AND NOT begins_with(#id, :prefix)",
        {"#status": "status", "#id": "id"},
        {":a": {"S": "INPROGRESS"}, ":b": {"S": "COMPLETED"}, ":prefix": {"S": "x"}},
    ),
]
ITEMS = [
    {"id": {"S": "k1"}, "expiration": {"N": "100"}, "status": {"S": "COMPLETED"}, "tags": {"SS": ["a"]}},
    {"id": {"S": "x2"}, "expiration": {"N": "10"}, "status": {"S": "INPROGRESS"}, "tags": {"SS": ["a", "b", "c"]}},
]


def test_a_condition_is_lexed_once_per_text_and_judges_items_as_moto_does(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [Item({"S": str(item["id"]["S"])}, None, item) for item in ITEMS]  # type: ignore[arg-type]

    def verdicts() -> list[list[bool]]:
        return [
            [get_filter_expression(text, names, values).expr(item) for item in items]
            for text, names, values in CONDITIONS
        ]

    original = ConditionExpressionParser._lex_condition_expression.__wrapped__  # type: ignore[attr-defined]
    lexed: list[str] = []

    def counted(self: ConditionExpressionParser) -> Any:
        lexed.append(self.condition_expression)
        return original(self)

    monkeypatch.setattr(
        ConditionExpressionParser, "_lex_condition_expression", fastpath._cached_condition_tokens(counted)
    )
    cached = [verdicts(), verdicts()]
    assert sorted(set(lexed)) == sorted(lexed)  # each text lexed once, whatever its names and values
    assert len(lexed) == 3
    monkeypatch.setattr(ConditionExpressionParser, "_lex_condition_expression", original)
    assert cached == [verdicts(), verdicts()]
    assert cached[0] == [[False, True], [True, True], [True, False], [True, False]]
    with pytest.raises(ValueError, match="Cannot parse condition"):  # an unparsable text is never kept
        get_filter_expression("#a = :b !", {"#a": "a"}, {":b": {"S": "x"}})
