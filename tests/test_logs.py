"""Log lines reach the stream in one write each: processes sharing stderr (the intake's
workers) must not interleave inside a line."""

from __future__ import annotations

import json

from encimap import logs


class Writes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_one_write_per_line():
    stream = Writes()
    try:
        logs.configure("info", "json", stream=stream)
        log = logs.get_logger("tests.logs")
        log.info("first", n=1)
        log.info("second", n=2)
    finally:
        logs.configure("warning", "console")  # as tests/conftest.py sets it
    assert [json.loads(call)["event"] for call in stream.calls] == ["first", "second"]
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in stream.calls)
