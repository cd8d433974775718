"""The Lambda functions: one thin handler per workflow step, over the logic in ``bayroute.steps``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Sequence
from typing import Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.shared import constants
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment


def count(metrics: Metrics, name: str, value: float = 1) -> None:
    """Add a Count metric, unless metrics are disabled (the local runtime).

    Disabled, Powertools neither publishes nor clears what was added, and once a metric holds 100 values it
    prints them as EMF to stdout regardless: a long local run would accumulate and print metrics.
    """
    if not is_metrics_disabled():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def tracing_enabled() -> bool:
    """Whether Powertools' Tracer would trace here, by its own rule (``Tracer._is_tracer_disabled``): inside
    Lambda, not under SAM local or Chalice, and not switched off by ``POWERTOOLS_TRACE_DISABLED``."""
    if resolve_truthy_env_var_choice(env=os.getenv(constants.TRACER_DISABLED_ENV, "false")):
        return False
    local = os.getenv(constants.SAM_LOCAL_ENV) or os.getenv(constants.CHALICE_LOCAL_ENV)
    return bool(os.getenv(constants.LAMBDA_TASK_ROOT_ENV)) and not local


def tracer_for(service: str) -> Tracer:
    """Powertools' Tracer with X-Ray where tracing is on (the deployed functions), and without it elsewhere.

    Powertools builds the X-Ray recorder even when tracing is off, and that recorder creates a botocore
    X-Ray client at once: a few hundred milliseconds of every local process start (the local stack, the
    CLI, each cold start measured by ``make bench``) for traces that are never sent.
    """
    if tracing_enabled():
        return Tracer(service=service)
    return Tracer(service=service, disabled=True, provider=_NoTraces())


class _NoSegment(BaseSegment):
    def close(self, end_time: int | None = None) -> None:
        pass

    def add_subsegment(self, subsegment: Any) -> None:
        pass

    def remove_subsegment(self, subsegment: Any) -> None:
        pass

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        pass


class _NoTraces(BaseProvider):
    """The provider of a disabled Tracer: a disabled Tracer never records, so nothing here does either."""

    @contextlib.contextmanager
    def in_subsegment(self, name: Any = None, **kwargs: Any) -> Generator[BaseSegment, None, None]:
        yield _NoSegment()

    @contextlib.asynccontextmanager
    async def in_subsegment_async(self, name: Any = None, **kwargs: Any) -> Any:
        yield _NoSegment()

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        pass

    def patch(self, modules: Sequence[str]) -> None:
        pass

    def patch_all(self) -> None:
        pass
