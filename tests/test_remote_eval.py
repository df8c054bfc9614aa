"""``kaffee eval --system openai:URL``: the remote model's answers through Kaffee's engine, and a
backend that does not answer is a failed request, never the local model standing in."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from kaffee.errors import KaffeeError
from kaffee.evaluation.system_base import Context, RequestFailed, SystemSettings, SystemUnavailable
from kaffee.evaluation.system_registry import build_system, parse_system_spec

PREFIX = "class A {\n    void f() {\n        int x = "


def test_spec_parses_and_needs_a_url() -> None:
    spec = parse_system_spec("openai:http://gpu:8080/v1,model=coder,label=big")
    assert (spec.kind, spec.target, spec.options, spec.label) == (
        "openai",
        "http://gpu:8080/v1",
        {"model": "coder"},
        "big",
    )
    with pytest.raises(KaffeeError, match="names no URL"):
        parse_system_spec("openai:")


def test_remote_system_answers_from_the_backend_and_fails_without_it(tiny_model_dir: Path) -> None:
    fake = FakeOpenAI().start()
    spec = parse_system_spec(
        f"openai:{fake.url},model=coder,local={tiny_model_dir},cache=off,timeout_ms=5000"
    )
    system = build_system(spec, SystemSettings())
    try:
        ctx = Context(PREFIX, "\n    }\n}\n")
        assert system.complete(ctx) == "fakeRemote(42);"
        assert system.next_tokens(ctx, k=3) == ["fakeRemote", "fake", "other"]
        assert {b["model"] for b in fake.requests} == {"coder"}
        assert "bits" not in system.capabilities and system.health() is None
        fake.stop()
        with pytest.raises(RequestFailed, match="did not answer"):
            system.complete(ctx)
        with pytest.raises(RequestFailed):
            system.next_tokens(ctx)  # down: the local model would answer, so the request fails
    finally:
        system.close()
        fake.stop()
    with pytest.raises(SystemUnavailable, match="does not answer"):
        build_system(spec, SystemSettings())  # nobody listens there any more
