"""A stack whose ports answer for another program is not taken for up and running.

Two modelreg stacks of different MODELREG_STACK_DIRs on one machine share the default ports.
Before, a second one saw the first one's servers answer, took them for its own, and sent them
its own credentials: every test of a CI run failed with authentication errors. Now only this
stack's own processes count, and starting it names the taken port."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.stack.launcher import LocalStack, Ports
from shared.stack.proc import StackError


@contextlib.contextmanager
def foreign_server() -> Iterator[int]:
    """Another program answering HTTP (501 to anything) on a free port."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stack_on_foreign_ports(tmp_path: Path) -> Iterator[LocalStack]:
    with foreign_server() as kafka, foreign_server() as postgres, foreign_server() as s3:
        stack = LocalStack(tmp_path / "stack", tmp_path / "cache")
        stack.state.ports = Ports(kafka=kafka, postgres=postgres, s3=s3)
        yield stack


def test_ports_that_answer_for_another_program_are_not_this_stack_serving(stack_on_foreign_ports: LocalStack) -> None:
    assert all(stack_on_foreign_ports.answers().values())  # what used to be taken for "up"
    assert stack_on_foreign_ports.running_parts() == {}
    assert not stack_on_foreign_ports.serving()


def test_starting_on_a_taken_port_names_it_and_the_way_out(stack_on_foreign_ports: LocalStack) -> None:
    port = stack_on_foreign_ports.ports.kafka
    with pytest.raises(StackError, match=rf"port {port} for kafka is taken by another program .*--kafka-port N"):
        stack_on_foreign_ports._check_port_free(port, "kafka")
