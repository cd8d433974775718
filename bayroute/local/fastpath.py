"""Make moto's server and Step Functions interpreter cheaper per request, without changing what they answer.

The local stack runs the workflow on moto 5.2.5, whose hot path redoes fixed work on every request or
execution. Measured on 2 cores with the real workflow, that work dominated each image's journey. ``apply()``
patches thirteen places (1 to 11, 13 and 14), each a cache or a cheaper way to something moto recomputes on every
call, and the stack serves moto's services through another (12):

1. ``DomainDispatcherApplication.get_backend_for_host`` (every API request, under one global lock): lists
   moto's package folder with a ``stat`` per entry, then tries every backend URL pattern. The answer depends
   only on the host name: memoized per dispatcher and host.
2. ``ExecutionWorker._get_evaluation_entrypoint`` (every execution): re-parses the ASL definition with
   ANTLR (milliseconds of CPU). The parsed program is kept per definition text and reused. Only programs
   made of states that keep their per-run state in the evaluation environment are shared (Task, Pass,
   Choice, Wait, Succeed, Fail); a definition with a Map or Parallel state, whose components carry
   per-run counters, is parsed afresh every time, as before. Every component of a shared program draws
   the key of its per-run values before the first execution uses it (``fix_heap_keys``).
3. ``boto_client_for`` (every Task, imported by name into each service module): builds a new boto3 client
   per call (and with it a new connection pool). Clients are kept per (region, service, endpoint) and shared;
   boto3 clients are thread-safe.
4. ``parse`` of jsonpath_ng, as the interpreter's ``json_path`` and ``result_path`` modules bind it (every
   ``.$`` parameter, selector and result path of every state): builds a new PLY parser per call, close to a
   millisecond of CPU, about twenty times per execution of this workflow. Parsed paths are kept per path
   text; a parsed path is an immutable tree whose ``find``/``update_or_create`` leave it unchanged.
5. ``parse`` of ``jsonpath_ng.ext``, which EventBridge's target delivery imports at each call
   (``EventTemplateParser.parse``: eight default input paths per event delivered to a target, each a new
   PLY parser). The module attribute is replaced by the same per-text cache, so that import finds it.
6. ``ErrorLookupFactory.for_service``: every error answer (a ``NoSuchKey``, a conditional-check failure)
   builds the service's error table from its botocore model, because ``get_error_model`` makes a new
   factory, and with it an empty cache, per call. The table depends only on the model, one object per service
   in moto: kept per model.
7. ``method_names_from_class``, as ``moto.core.responses`` binds it (every JSON-protocol request: SQS,
   DynamoDB, EventBridge, Step Functions): lists the response class's members with ``inspect.getmembers``
   to check that the action is one of its methods. A class's methods do not change: kept per class.
8. ``SQSBackend.is_message_valid_based_on_retention_period`` (every message a ReceiveMessage returns): reads
   the queue's retention period through ``get_queue_attributes``, which computes every attribute three
   times, the message counts included, each a walk over every message in the queue; a receive from a queue
   with a backlog costs time in the square of that backlog. It now reads the queue's retention period
   directly, the value that attribute is built from.
9. The deep copy of an update expression's syntax tree in moto's DynamoDB ``Validator`` (every UpdateItem,
   the idempotency record's completion on each object): ``copy.deepcopy`` of the tree of about fifty plain
   objects takes close to a millisecond; a pickle round trip makes the same independent copy about eight
   times faster. Anything else that module copies still goes through ``copy.deepcopy``.
10. ``_invoke_lambda_function`` of the interpreter's Lambda task (three per image): a boto3 ``lambda.invoke``
   whose request botocore serialises and signs, the stack's Invoke middleware parses and answers by running
   the handler in this very thread, and botocore parses back: about 1.3 ms of client-side CPU per task in a
   slow hour, besides the handler. For the functions the stack registers (``serve_in_process``), a
   synchronous invoke now runs ``lambda_api.invoke``, the middleware's own call, directly, and answers what
   botocore would have parsed from the middleware's answer: status 200, version ``$LATEST``, the payload, and
   ``FunctionError: Unhandled`` when the handler raised, so the interpreter sees the same results, error
   names and causes. Any other invoke (another endpoint, an asynchronous or qualified one, a function the
   stack does not know) takes the original path.
11. ``SQSBackend.send_message`` (every message sent: EventBridge's deliveries to the ingest and outcomes
   queues, the dead-letter queue): reads ``queue.attributes`` for one attribute, ContentBasedDeduplication,
   and that property counts the queue's visible, delayed and in-flight messages, three walks over every message
   in the queue; a queue with a backlog costs time in its length per message sent (7% of the AWS process's time
   in a burst of 120 images). During a send to a standard queue, which has no such attribute, the property
   answers without the counts; FIFO queues and every other reader of ``attributes`` get moto's answer.

12. moto's per-service Flask applications (every API request): ``moto_application()`` builds moto's dispatcher
   over :class:`FlasklessBackend`, which answers a service's API requests as its Flask application would (the
   same view, request class, response class and CORS header) without Flask's request context, session and
   after-request hooks: a fifth of the time moto spent per call, measured side by side on the stack's call mix.
   Requests from browsers (an ``Origin`` or ``OPTIONS``), unmatched URLs and moto's admin API keep Flask.

13. ``ExecutionState._evaluate_with_timeout`` (every Task state, three per image): evaluates the state in a
   thread started for it, which signals an event, so that the execution's thread can give up waiting after the
   state's timeout. For a state with moto's default timeout (over three years: the definition sets none), the
   state is evaluated in the execution's thread, with the same steps in the same order. A state with a timeout or
   a heartbeat keeps moto's thread.

14. ``ConditionExpressionParser._lex_condition_expression`` (every DynamoDB condition or filter: the idempotency
   record's PutItem, once per image): splits the condition into tokens, compiling a list of regular expressions
   for each token (``re``'s cache makes each a lookup; in all, 3.5% of the AWS process's samples in a burst of
   120 images, a seventh of DynamoDB's). The tokens depend only on the expression's text: kept per text, for up
   to 4,096 texts.

And ``serve_in_process(url, app, functions)`` short-circuits the transport: a botocore request from this process to the
local stack's own URL (``http://127.0.0.1:PORT``, or ``http://localhost:PORT`` as the interpreter calls it) is
handed to the stack's WSGI application directly, with the WSGI environment werkzeug's server would have built
from the same bytes (moto's header-name preservation included), instead of a TCP connection, a server thread
and werkzeug's HTTP parsing per call (werkzeug closes every connection). Same application, same answers;
other processes (``bayroute submit``, the CLI) still use the socket. Each API call costs about half as much.

The local stack builds its application on ``moto_application()``, calls ``serve_in_process`` once it is built
(it applies the caches too) and ``stop_serving_in_process`` before it stops. The stack's AWS process, which runs
no Step Functions, serves ``moto_application()`` too, calls ``apply_to_services`` (patches 1, 5 to 9, 11 and 14) and
never imports moto's interpreter.
``tests/integration/test_fastpath_contract.py`` fails loudly when a moto, werkzeug or botocore upgrade moves or
changes anything patched or mirrored here.
"""

from __future__ import annotations

import copy
import functools
import importlib
import io
import json
import pickle
import sys
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jsonpath_ng.ext as jsonpath_ext
import moto.core.responses as moto_responses
import moto.dynamodb.parsing.validators as dynamodb_validators
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import ClientError
from botocore.handlers import BUILTIN_HANDLERS
from flask import Flask
from flask import Response as FlaskResponse
from moto.core.botocore_stubber import MockRawResponse
from moto.core.errors import ErrorLookupFactory
from moto.core.request import (
    PRESERVED_HEADER_NAMES_ENVIRON_KEY,
    environ_key_for_header,
    should_preserve_original_header_name,
)
from moto.core.utils import convert_to_flask_response, unix_time
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.parsing.ast_nodes import Node as DynamoExpressionNode  # type: ignore[attr-defined]
from moto.moto_api import recorder
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.moto_server.werkzeug_app import create_backend_app as create_flask_backend_app
from moto.settings import DISABLE_GLOBAL_CORS
from moto.sqs.models import Queue, SQSBackend
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from bayroute.adapters import signed_s3
from bayroute.local import lambda_api

# The moto modules that bind ``boto_client_for`` by name (``from ...boto_client import boto_client_for``).
BOTO_CLIENT_MODULES = (
    "moto.stepfunctions.parser.asl.utils.boto_client",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.lambda_eval_utils",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_batch",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_dynamodb",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_ecs",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_events",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_glue",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sns",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sqs",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_unsupported",
    "moto.stepfunctions.parser.asl.component.state.exec.state_map.item_reader.eval.resource_eval_s3",
    "moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval.resource_eval_s3",
)
# State types whose parsed components hold no per-execution state, so one parsed program can serve all runs.
SHAREABLE_STATE_TYPES = frozenset({"Task", "Pass", "Choice", "Wait", "Succeed", "Fail"})
_PATCHED = "__bayroute_fastpath__"
_lock = threading.Lock()
_programs: dict[str, Any] = {}
_clients: dict[tuple[str, str, bool, str], Any] = {}
# moto's Step Functions interpreter takes over a second to import (it pulls in Batch, EC2 and more): its
# modules are imported where its patches are made, so that the stack's AWS process, which runs no
# interpreter, never loads them (``apply_to_services``).
_interpreter_patched = False


def _patched(function: Callable[..., Any]) -> Callable[..., Any]:
    setattr(function, _PATCHED, True)
    return function


def services_patched() -> bool:
    return bool(getattr(DomainDispatcherApplication.get_backend_for_host, _PATCHED, False))


def is_applied() -> bool:
    return _interpreter_patched and services_patched()


# -- 1. backend lookup per host --------------------------------------------------------------------------


def _cached_backend_lookup(original: Callable[[Any, str | None], Any]) -> Callable[[Any, str | None], Any]:
    @functools.wraps(original)
    def get_backend_for_host(self: Any, host: str | None) -> Any:
        cache: dict[str | None, Any] = self.__dict__.setdefault("_bayroute_backend_for_host", {})
        try:
            return cache[host]
        except KeyError:
            backend = cache[host] = original(self, host)
            return backend

    return _patched(get_backend_for_host)


# -- 2. parsed programs per definition -------------------------------------------------------------------


def shareable(definition: str) -> bool:
    """Whether every state of the definition (nested ones included) is of a type in SHAREABLE_STATE_TYPES."""
    try:
        document = json.loads(definition)
    except ValueError:
        return False

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            states = node.get("States")
            if isinstance(states, dict) and not all(
                isinstance(state, dict) and state.get("Type") in SHAREABLE_STATE_TYPES for state in states.values()
            ):
                return False
            return all(walk(value) for value in node.values())
        if isinstance(node, list):
            return all(walk(value) for value in node)
        return True

    return isinstance(document, dict) and isinstance(document.get("States"), dict) and walk(document)


def fix_heap_keys(program: Any) -> None:
    """Give every component of a parsed program its heap key now, before executions share it.

    A component keeps its per-run values (a retrier's attempt count, its backoff multiplier) in each
    execution's heap under ``heap_key``, a random id the component draws on first use. Two executions that
    reach the same component for the first time at once can each draw one, and the later overwrites the
    earlier: the execution that stored its count under the lost key finds none and starts counting again (an
    extra retry was measured: five endpoint calls where Retry allows four). Drawn here, once, the key never
    changes.
    """
    from moto.stepfunctions.parser.asl.component.component import Component
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent

    seen: set[int] = set()
    pending: list[Any] = [program]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, EvalComponent):
            node.heap_key  # noqa: B018  (the property draws the key on first access)
        if isinstance(node, Component):
            pending.extend(vars(node).values())
        elif isinstance(node, list | tuple | set | frozenset):
            pending.extend(node)
        elif isinstance(node, dict):
            pending.extend(node.values())


def _cached_entrypoint(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def _get_evaluation_entrypoint(self: Any) -> Any:
        definition = self._evaluation_details.state_machine_details.definition
        program = _programs.get(definition)
        if program is not None:
            return program
        program = original(self)
        if shareable(definition):
            fix_heap_keys(program)
            with _lock:
                program = _programs.setdefault(definition, program)
        return program

    return _patched(_get_evaluation_entrypoint)


# -- 3. one boto3 client per region, service and endpoint ------------------------------------------------


def _cached_clients(original: Callable[..., Any], boto_client: Any) -> Callable[..., Any]:
    @functools.wraps(original)
    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        # What the original reads besides its arguments: whether moto intercepts boto in-process (mock_aws),
        # else the server port it calls. It ignores state_credentials, so the key does too.
        key = (region, service, bool(boto_client.botocore_stubber.enabled), boto_client.moto_server_port())
        client = _clients.get(key)
        if client is None:
            with _lock:
                client = _clients.get(key)
                if client is None:
                    client = _clients[key] = original(region, service, state_credentials)
        return client

    return _patched(boto_client_for)


# -- 4. parsed JSONPath expressions per path text --------------------------------------------------------


def _cached_parse(original: Callable[[str], Any]) -> Callable[[str], Any]:
    return _patched(functools.lru_cache(maxsize=4096)(original))


# -- 6. error tables per service ---------------------------------------------------------------------------


def _cached_error_lookup(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    # Per model object, not per service id: moto's own models (one per service, ``get_service_model`` is cached)
    # declare errors that botocore's model of the same service does not (S3's PreconditionFailed is a 412 in
    # moto's, unknown and so a 400 in botocore's). The model is kept with its table, so that its id stays its own.
    tables: dict[int, tuple[Any, Any]] = {}

    @functools.wraps(original)
    def for_service(self: Any, service_model: Any) -> Any:
        if service_model.metadata.get("serviceId") is None:  # moto does not cache these either
            return original(self, service_model)
        cached = tables.get(id(service_model))
        if cached is None:
            cached = tables[id(service_model)] = (service_model, original(self, service_model))
        return cached[1]

    return _patched(for_service)


# -- 7. a response class's method names per class --------------------------------------------------------


def _cached_method_names(original: Callable[[object], list[str]]) -> Callable[[object], list[str]]:
    return _patched(functools.lru_cache(maxsize=None)(original))


# -- 8. an SQS message's retention check without the queue's other attributes -----------------------------


def _retention_check(original: Callable[[Any, str, Any], bool]) -> Callable[[Any, str, Any], bool]:
    @functools.wraps(original)
    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention_period = self.get_queue(queue_name).message_retention_period
        return bool(retention_period + message.sent_timestamp / 1000 > unix_time())

    return _patched(is_message_valid_based_on_retention_period)


# -- 9. the DynamoDB validator's copy of an expression tree ------------------------------------------------


@_patched
def copy_expression_tree(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy`` for moto's DynamoDB validators: an expression tree is copied by a pickle round trip."""
    if memo is None and isinstance(value, DynamoExpressionNode):
        return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    return copy.deepcopy(value, memo)


# -- 10. the interpreter's Lambda tasks, handed to the stack's functions directly -----------------------------

# The parameters a synchronous, unqualified invoke carries (the payload is optional).
_DIRECT_INVOKE_PARAMETERS = frozenset({"FunctionName", "Payload", "InvocationType"})


def _direct_lambda_invoke(
    original: Callable[..., dict[str, Any]], lambda_eval_utils: Any
) -> Callable[..., dict[str, Any]]:
    @functools.wraps(original)
    def _invoke_lambda_function(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
        function = _direct_function(parameters, region, state_credentials, lambda_eval_utils)
        if function is None:
            return original(parameters=parameters, region=region, state_credentials=state_credentials)
        payload = parameters.get("Payload") or b""
        body, failed = lambda_api.invoke(function, payload if isinstance(payload, bytes) else payload.encode())
        response: dict[str, Any] = {
            "StatusCode": 200,
            "ExecutedVersion": "$LATEST",
            "Payload": lambda_eval_utils._from_payload(io.BytesIO(body)),
        }
        if failed:
            response["FunctionError"] = "Unhandled"
        return response

    return _patched(_invoke_lambda_function)


def _direct_function(
    parameters: dict[str, Any], region: str, state_credentials: Any, lambda_eval_utils: Any
) -> lambda_api.LocalFunction | None:
    """The registered function a synchronous invoke of the stack's endpoint names, or None."""
    if not _functions or not set(parameters) <= _DIRECT_INVOKE_PARAMETERS:
        return None
    if parameters.get("InvocationType", "RequestResponse") != "RequestResponse":
        return None
    client = lambda_eval_utils.boto_client_for(region=region, service="lambda", state_credentials=state_credentials)
    functions = _functions.get(str(client.meta.endpoint_url).rstrip("/"))
    if functions is None:
        return None
    return functions.get(lambda_api.function_name_from_path(str(parameters.get("FunctionName", ""))))


# -- 11. a message sent to a standard queue without counting the queue's messages -------------------------

_sending_to_standard_queue = threading.local()


def _send_without_counting(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def send_message(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        _sending_to_standard_queue.active = not self.get_queue(queue_name).fifo_queue
        try:
            return original(self, queue_name, *args, **kwargs)
        finally:
            _sending_to_standard_queue.active = False

    return _patched(send_message)


def _attributes_without_counts_while_sending(original: property) -> property:
    def attributes(self: Any) -> dict[str, Any]:
        # The one attribute a send to a standard queue reads, ContentBasedDeduplication, exists on FIFO queues
        # only: the standard queue's answer is the same with or without the message counts.
        if getattr(_sending_to_standard_queue, "active", False) and not self.fifo_queue:
            return {}
        return original.fget(self)  # type: ignore[misc]

    attributes.__wrapped__ = original.fget  # type: ignore[attr-defined]
    return property(_patched(attributes))


# -- 13. a Task state without a timeout, evaluated in its execution's own thread ------------------------------


def _evaluate_inline_without_timeout(
    original: Callable[[Any, Any], None], timeout_seconds_type: Any
) -> Callable[[Any, Any], None]:
    """``ExecutionState._evaluate_with_timeout``, in the calling thread for a state whose timeout is moto's
    default (``TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS``, over three years: no timeout in the definition and no
    heartbeat), with the same steps as moto's in the same order; moto's own, with its thread, for every other
    state."""
    unbounded = timeout_seconds_type.DEFAULT_TIMEOUT_SECONDS

    @functools.wraps(original)
    def _evaluate_with_timeout(self: Any, env: Any) -> None:
        timeout = self.timeout
        if type(timeout) is not timeout_seconds_type or timeout.timeout_seconds != unbounded:
            return original(self, env)
        timeout.eval(env=env)
        env.stack.pop()
        frame = env.open_frame()
        frame.states.reset(input_value=env.states.get_input())
        frame.stack = copy.deepcopy(env.stack)
        failure: Exception | None = None
        try:
            self._eval_execution(frame)
        except Exception as error:  # moto's worker thread keeps it for the caller, which raises it after closing
            failure = error
        frame.set_ended()
        env.close_frame(frame)
        if failure is not None:
            raise failure
        execution_output = frame.stack[-1]
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
            env.states.reset(input_value=env.stack.pop())
        return None

    return _patched(_evaluate_with_timeout)


# -- 14. the tokens of a DynamoDB condition expression per expression text ----------------------------------

_CONDITION_TOKENS_KEPT = 4096  # distinct expression texts; a program sends a handful


def _cached_condition_tokens(original: Callable[[Any], deque[Any]]) -> Callable[[Any], deque[Any]]:
    tokens: dict[str, tuple[Any, ...]] = {}

    @functools.wraps(original)
    def _lex_condition_expression(self: Any) -> deque[Any]:
        expression = self.condition_expression
        found = tokens.get(expression)
        if found is None:
            found = tuple(original(self))
            if len(tokens) < _CONDITION_TOKENS_KEPT:
                tokens[expression] = found
        # The parser consumes the deque it is given; the tokens are named tuples, never changed.
        return deque(found)

    return _patched(_lex_condition_expression)


def apply_to_services() -> None:
    """Install the patches of moto's service backends and its server, 1, 5 to 9, 11 and 14 (once per process): all that
    the stack's AWS process, which runs no Step Functions, needs."""
    with _lock:
        _apply_to_services()


def _apply_to_services() -> None:
    if services_patched():
        return
    jsonpath_ext.parse = _cached_parse(jsonpath_ext.parse)  # type: ignore[assignment]
    ErrorLookupFactory.for_service = _cached_error_lookup(ErrorLookupFactory.for_service)  # type: ignore[method-assign,assignment]
    moto_responses.method_names_from_class = _cached_method_names(moto_responses.method_names_from_class)  # type: ignore[assignment]
    SQSBackend.is_message_valid_based_on_retention_period = _retention_check(  # type: ignore[method-assign,assignment]
        SQSBackend.is_message_valid_based_on_retention_period
    )
    dynamodb_validators.deepcopy = copy_expression_tree
    SQSBackend.send_message = _send_without_counting(SQSBackend.send_message)  # type: ignore[method-assign]
    ConditionExpressionParser._lex_condition_expression = _cached_condition_tokens(  # type: ignore[method-assign,assignment]
        ConditionExpressionParser._lex_condition_expression
    )
    Queue.attributes = _attributes_without_counts_while_sending(Queue.attributes)  # type: ignore[assignment,method-assign,arg-type]
    # Last: services_patched() reads this one.
    DomainDispatcherApplication.get_backend_for_host = _cached_backend_lookup(  # type: ignore[method-assign,assignment]
        DomainDispatcherApplication.get_backend_for_host
    )


def apply() -> None:
    """Install the patches (all but 12, which ``moto_application`` builds) and the in-process transport hook (once
    per process)."""
    global _interpreter_patched
    with _lock:
        _apply_to_services()
        if _interpreter_patched:
            return
        from moto.stepfunctions.parser.asl.component.common.path import result_path
        from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds
        from moto.stepfunctions.parser.asl.component.state.exec.execute_state import ExecutionState
        from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
        from moto.stepfunctions.parser.asl.utils import boto_client, json_path
        from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

        json_path.parse = _cached_parse(json_path.parse)  # type: ignore[assignment]
        result_path.parse = _cached_parse(result_path.parse)  # type: ignore[assignment]
        original_client = boto_client.boto_client_for
        cached_client = _cached_clients(original_client, boto_client)
        for name in BOTO_CLIENT_MODULES:
            module = importlib.import_module(name)
            if getattr(module, "boto_client_for", None) is not original_client:
                raise RuntimeError(f"{name} no longer binds moto's boto_client_for: bayroute.local.fastpath is stale")
            module.boto_client_for = cached_client  # type: ignore[attr-defined]
        ExecutionWorker._get_evaluation_entrypoint = _cached_entrypoint(  # type: ignore[method-assign,assignment]
            ExecutionWorker._get_evaluation_entrypoint
        )
        lambda_eval_utils._invoke_lambda_function = _direct_lambda_invoke(
            lambda_eval_utils._invoke_lambda_function, lambda_eval_utils
        )
        ExecutionState._evaluate_with_timeout = _evaluate_inline_without_timeout(  # type: ignore[method-assign,assignment]
            ExecutionState._evaluate_with_timeout, TimeoutSeconds
        )
        _install_transport()
        _interpreter_patched = True


def program_cached(definition: str) -> bool:
    return definition in _programs


def cached_client_services() -> set[str]:
    return {service for _, service, _, _ in _clients}


# -- the transport: botocore → the stack's WSGI application, in this process -----------------------------

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def moto_application() -> DomainDispatcherApplication:
    """moto's server application (one per service, chosen per request by host, path and signature), whose
    services answer API requests without Flask's request machinery (:class:`FlasklessBackend`)."""
    return DomainDispatcherApplication(_create_backend_app)  # type: ignore[arg-type]


def _create_backend_app(service: str) -> WsgiApp:
    """``DomainDispatcherApplication``'s ``create_app``: moto's application for ``service``, Flask-less but for
    moto's admin API and dashboard (``moto_api``), which are rare and render Flask templates."""
    app = create_flask_backend_app(service)  # type: ignore[arg-type]
    return app if service == "moto_api" else FlasklessBackend(app)


class FlasklessBackend:
    """One of moto's per-service Flask applications, with API requests answered as Flask would answer them.

    Flask's part of an answer (a request context pushed and popped, the session, the after-request hooks,
    the response made again from the view's) cost about a fifth of moto's time per API call in the stack's
    AWS process. This matches the URL with Flask's own adapter, builds the request with Flask's request class,
    and runs the view's body as ``moto.core.utils.convert_to_flask_response`` does, then adds the one header
    Flask-CORS adds, as moto configures it, to a request that names no ``Origin``. Anything else (a request
    with an ``Origin`` or ``OPTIONS``, a URL no route matches, a view of another kind) goes to Flask.
    """

    def __init__(self, app: Flask) -> None:
        self.flask_app = app
        self._cors = not DISABLE_GLOBAL_CORS

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        app = self.flask_app
        if environ["REQUEST_METHOD"] == "OPTIONS" or "HTTP_ORIGIN" in environ:
            return app(environ, start_response)  # a browser's CORS request: Flask-CORS decides
        request = app.request_class(environ)
        try:
            rule, _ = app.create_url_adapter(request).match(return_rule=True)  # type: ignore[union-attr]
        except HTTPException:  # no route (404, 405) or a redirect: Flask's own answer
            return app(environ, start_response)
        view = app.view_functions.get(rule.endpoint)
        if type(view) is not convert_to_flask_response:
            return app(environ, start_response)
        response: Response
        try:
            response = _moto_view_response(view.callback, request)
        except HTTPException as error:  # Flask answers a view's HTTP error with the error's own response
            response = FlaskResponse.force_type(error.get_response(environ), environ)
        if self._cors and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = "*"
        return response(environ, start_response)


def _moto_view_response(callback: Callable[..., Any], request: Any) -> FlaskResponse:
    """The body of ``convert_to_flask_response.__call__``, with ``request`` for Flask's context-local one."""
    recorder._record_request(request)
    try:
        result = callback(request, request.raw_url, dict(request.headers))
    except ClientError as error:
        result = 400, {}, error.response["Error"]["Message"]
    if len(result) == 3:
        status, headers, content = result
    else:
        status, headers, content = 200, {}, result
    response = FlaskResponse(response=content, status=status, headers=headers)
    if request.method == "HEAD" and "content-length" in headers:
        response.headers["Content-Length"] = headers["content-length"]
    return response


_apps: dict[str, WsgiApp] = {}  # "http://127.0.0.1:PORT" and "http://localhost:PORT" → the stack's application
_functions: dict[str, Mapping[str, lambda_api.LocalFunction]] = {}  # the same origins → the stack's functions
_METHODS_EXPECTING_BODY = frozenset({"PATCH", "POST", "PUT"})  # http.client sends Content-Length: 0 for these


def _origins(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.port is None:
        raise ValueError(f"expected http://HOST:PORT, got {url!r}")
    hosts = (
        {parts.hostname, "127.0.0.1", "localhost"} if parts.hostname in ("127.0.0.1", "localhost") else {parts.hostname}
    )
    return [f"http://{host}:{parts.port}" for host in sorted(h for h in hosts if h)]


def serve_in_process(url: str, app: WsgiApp, functions: Mapping[str, lambda_api.LocalFunction] | None = None) -> None:
    """Route this process's botocore requests for ``url`` (and its loopback aliases) to ``app``, and the
    interpreter's synchronous invokes of ``functions`` (by name) straight to them; applies the caches."""
    apply()
    with _lock:
        for origin in _origins(url):
            _apps[origin] = app
            if functions is not None:
                _functions[origin] = functions


def stop_serving_in_process(url: str) -> None:
    """Requests for ``url`` go over the network again (the stack is stopping)."""
    with _lock:
        for origin in _origins(url):
            _apps.pop(origin, None)
            _functions.pop(origin, None)


def serving_in_process(url: str) -> bool:
    return all(origin in _apps for origin in _origins(url))


def _body_bytes(body: Any) -> bytes | None:
    """The request body as bytes, or None for a body this transport does not take (a one-shot stream)."""
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    if hasattr(body, "read") and hasattr(body, "seek") and hasattr(body, "tell"):
        start = body.tell()
        data = body.read()
        body.seek(start)  # botocore may read it again (checksums, a retry)
        return data if isinstance(data, bytes) else str(data).encode("utf-8")
    return None


def wsgi_environ(request: AWSPreparedRequest | signed_s3.SignedRequest, body: bytes) -> dict[str, Any]:
    """The environment werkzeug's server (with moto's request handler) builds for this request.

    Mirrors ``werkzeug.serving.WSGIRequestHandler.make_environ`` for a request line of ``path?query`` and the
    headers http.client adds (``Host`` from the URL, ``Accept-Encoding: identity``, ``Content-Length`` for a
    body), then moto's
    ``MotoRequestHandler.make_environ`` (underscored ``x-amz-meta-`` names kept).
    """
    from io import BytesIO

    from werkzeug.serving import _wsgi_encoding_dance

    parts = urllib.parse.urlsplit(request.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers: list[tuple[str, str]] = [
        (str(name), value.decode("latin-1") if isinstance(value, bytes) else str(value))
        for name, value in request.headers.items()
    ]
    names = {name.lower() for name, _ in headers}
    if "host" not in names:
        headers.insert(0, ("Host", parts.netloc))
    if "accept-encoding" not in names:
        headers.append(("Accept-Encoding", "identity"))  # http.client adds it to every request
    if "content-length" not in names and (body or request.method in _METHODS_EXPECTING_BODY):
        headers.append(("Content-Length", str(len(body))))
    environ: dict[str, Any] = {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": "bayroute-in-process",
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": _wsgi_encoding_dance(urllib.parse.unquote(parts.path)),
        "QUERY_STRING": _wsgi_encoding_dance(parts.query),
        "REQUEST_URI": _wsgi_encoding_dance(target),
        "RAW_URI": _wsgi_encoding_dance(target),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": 0,
        "SERVER_NAME": parts.hostname or "127.0.0.1",
        "SERVER_PORT": str(parts.port),
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    for name, value in headers:
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        value = value.replace("\r\n", "")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = f"HTTP_{key}"
            if key in environ:
                value = f"{environ[key]},{value}"
        environ[key] = value
    # moto's request handler: underscored metadata headers are kept under their own names.
    dashed = {environ_key_for_header(name) for name, _ in headers if "_" not in name}
    preserved: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    for name, value in headers:
        if not should_preserve_original_header_name(name):
            continue
        key = environ_key_for_header(name)
        if key in dashed:
            continue
        preserved.setdefault(key, name)
        values.setdefault(key, []).append(value.replace("\r\n", ""))
    for key, key_values in values.items():
        environ[key] = ",".join(key_values)
    environ[PRESERVED_HEADER_NAMES_ENVIRON_KEY] = preserved
    return environ


def call_app(app: WsgiApp, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of one WSGI call; an exception becomes werkzeug's 500, as the server answers it."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        answer["status"], answer["headers"] = status, headers
        return lambda chunk: answer.setdefault("written", []).append(chunk)

    try:
        chunks = app(environ, start_response)
        try:
            body = b"".join(answer.get("written", [])) + b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    except Exception:  # werkzeug's server logs it and answers 500 Internal Server Error
        import logging

        logging.getLogger(__name__).exception("the local stack's application failed on %s", environ["PATH_INFO"])
        return 500, [("Content-Type", "text/html; charset=utf-8")], b"<h1>Internal Server Error</h1>"
    return int(str(answer["status"]).split(" ", 1)[0]), list(answer["headers"]), body


def _app_for(url: str) -> WsgiApp | None:
    """The stack's application if ``url`` is on a registered origin."""
    if not _apps or not url.startswith("http://"):
        return None
    end = url.find("/", len("http://"))
    return _apps.get(url if end < 0 else url[:end])


def _send_in_process(request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
    """botocore's ``before-send`` hook: answer requests for a registered origin without the network."""
    app = _app_for(request.url)
    if app is None:
        return None
    body = _body_bytes(request.body)
    if body is None:
        return None
    status, headers, content = call_app(app, wsgi_environ(request, body))
    if request.method == "HEAD":
        content = b""
    return AWSResponse(request.url, status, dict(headers), MockRawResponse(content))


def _send_signed_in_process(request: signed_s3.SignedRequest) -> signed_s3.Reply | None:
    """The same for the functions' signed S3 client (``bayroute.adapters.signed_s3``), which does without botocore."""
    app = _app_for(request.url)
    if app is None:
        return None
    status, headers, content = call_app(app, wsgi_environ(request, request.body))
    if request.method == "HEAD":
        content = b""
    return signed_s3.Reply(status, {name.lower(): value for name, value in headers}, content)


def _install_transport() -> None:
    """Every botocore session created from now on asks ``_send_in_process`` before it sends (as moto's own
    in-process mock hooks in), and so does boto3's default session if it exists already; the functions' signed
    S3 client asks ``_send_signed_in_process``."""
    BUILTIN_HANDLERS.append(("before-send", _send_in_process))
    signed_s3.IN_PROCESS_SENDERS.append(_send_signed_in_process)
    import boto3

    if boto3.DEFAULT_SESSION is not None:
        boto3.DEFAULT_SESSION.events.register("before-send", _send_in_process)
