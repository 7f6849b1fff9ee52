"""A Lambda function in its own process: answers invocations, reports errors, measures memory."""

from __future__ import annotations

import os
from typing import Any

import pytest

from imaging_ai.local.dispatcher import LambdaContext
from imaging_ai.local.function_process import FunctionFailed, FunctionProcess

HANDLER = f"{__name__}.handler"


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The function under test: echoes, or raises when asked to."""
    if event.get("raise"):
        raise ValueError("asked to fail")
    return {"pid": os.getpid(), "echo": event["value"], "function": context.function_name}


@pytest.fixture
def function() -> Any:
    process = FunctionProcess(HANDLER, "echo").start(timeout_s=60)
    yield process
    process.stop()


def test_invocations_run_in_the_function_process(function: FunctionProcess) -> None:
    # Given a function started in its own process (INIT done)
    # When it is invoked twice
    first = function({"value": 1}, LambdaContext(function_name="echo"))
    second = function({"value": 2}, LambdaContext(function_name="echo"))
    # Then each answer comes from that one process, not from ours, with the context passed
    assert first["pid"] == second["pid"] == function.pid != os.getpid()
    assert (first["echo"], second["echo"], first["function"]) == (1, 2, "echo")
    # And its peak resident memory is measured (a Python process holds well over 10 MB)
    assert function.peak_rss_bytes() > 10 * 2**20


def test_a_raising_handler_fails_the_invocation_not_the_process(
    function: FunctionProcess,
) -> None:
    # When the handler raises
    with pytest.raises(FunctionFailed, match="ValueError"):
        function({"raise": True}, LambdaContext(function_name="echo"))
    # Then the next invocation is answered by the same process
    assert function({"value": 3}, LambdaContext(function_name="echo"))["echo"] == 3


def test_a_stopped_function_has_exited(function: FunctionProcess) -> None:
    # Given a running function, When it is stopped, Then its process has ended
    assert function.running
    function.stop()
    assert not function.running
