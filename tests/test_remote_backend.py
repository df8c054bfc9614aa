"""server/remote.py against a fake OpenAI-compatible server: prompts as ids or text, healing,
stop rules, cancellation (the connection closes), down/up with one notice each, logprob ranking."""

from __future__ import annotations

import math
import threading
import time

import pytest
from fake_openai import FakeOpenAI
from kaffee.errors import KaffeeError
from kaffee.server.context import Prompt
from kaffee.server.decode import TokenCandidate
from kaffee.server.postprocess import LineStop
from kaffee.server.remote import RemoteBackend, RemoteConfig, parse_backend, rank_tokens
from kaffee.server.settings import parse_settings

TEXT = "class A {\n    void f() {\n        int x = "


@pytest.fixture
def backends():
    made: list[tuple[FakeOpenAI, RemoteBackend]] = []

    def make(tokenizer, fake: FakeOpenAI | None = None, **config) -> tuple[FakeOpenAI, RemoteBackend]:
        fake = fake or FakeOpenAI()
        fake.decode = lambda ids: tokenizer.decode_bytes(ids).decode("utf-8")
        fake.start()
        backend = RemoteBackend(RemoteConfig(fake.url, **config), tokenizer)
        made.append((fake, backend))
        return fake, backend

    yield make
    for fake, backend in made:
        backend.close()
        fake.stop()


def _prompt(tok, text: str = TEXT, heal: str = "") -> Prompt:
    return Prompt(ids=[tok.eos_id, *tok.encode(text)], heal=heal.encode(), window_start=0, fim=False)


def test_parse_backend_forms_and_errors() -> None:
    assert parse_backend("openai:http://gpu:8080").url == "http://gpu:8080/v1"
    assert parse_backend("openai:https://gpu/api/v1/", model="m").url == "https://gpu/api/v1"
    assert parse_backend("openai:http://gpu:8080", model="m").model == "m"
    for bad in ("http://gpu:8080", "openai:", "vllm:http://gpu", "openai:ftp://gpu", "openai:gpu:8080"):
        with pytest.raises(KaffeeError):
            parse_backend(bad)
    settings, problems = parse_settings({"backend": "openai:http://gpu:8080/v1", "remoteModel": "m"})
    assert (settings.backend, settings.remote_model, problems) == ("openai:http://gpu:8080/v1", "m", [])
    settings, problems = parse_settings({"backend": "gpu:8080"})
    assert settings.backend is None and "must be openai:URL" in problems[0]


def test_ids_first_then_text_once_refused_and_stop_rule_cuts(tiny_tokenizer, backends) -> None:
    fake, backend = backends(tiny_tokenizer, FakeOpenAI(refuse_ids=True))
    prompt = _prompt(tiny_tokenizer)
    for _ in range(2):
        gen = backend.complete(prompt, LineStop(""), max_new=16)
        assert (gen.text, gen.reason) == ("fakeRemote(42);", "newline")
    warm, bodies = fake.requests[:2], fake.requests[2:]  # a one-token warm-up learns what the server takes
    assert isinstance(warm[0]["prompt"], list) and warm[1]["prompt"] == "<|endoftext|>"
    assert warm[0]["max_tokens"] == warm[1]["max_tokens"] == 1
    assert len(bodies) == 2  # ids were refused once (by the warm-up), text from then on
    assert bodies[0]["prompt"] == bodies[1]["prompt"] == "<|endoftext|>" + TEXT
    assert bodies[1]["model"] == "fake-model" and bodies[1]["temperature"] == 0.0
    assert bodies[1]["stream"] is True and bodies[1]["max_tokens"] == 16
    assert backend.stats.as_text and backend.up

    fake2, backend2 = backends(tiny_tokenizer)  # a server that takes ids keeps getting ids
    backend2.complete(prompt, LineStop(""), max_new=16)
    backend2.complete(prompt, LineStop(""), max_new=16)
    assert [b["prompt"] for b in fake2.requests] == [[tiny_tokenizer.eos_id], prompt.ids, prompt.ids]


def test_healing_kept_when_the_backend_spells_it_else_one_unhealed_retry(tiny_tokenizer, backends) -> None:
    spells = {"ok": True}

    def reply(prompt: str) -> list[str]:
        if prompt.endswith("Syst"):  # the unhealed prompt
            return ["em", ".", "err", "\n"]
        return ["System", ".", "out", "\n"] if spells["ok"] else ["Foo", ".", "bar", "\n"]

    fake, backend = backends(tiny_tokenizer, FakeOpenAI(reply=reply))
    prompt = _prompt(tiny_tokenizer, "class A {\n    ", heal="Syst")
    gen = backend.complete(prompt, LineStop(""), max_new=16)
    assert gen.text == "em.out" and backend.stats.heal_retries == 0
    spells["ok"] = False
    gen = backend.complete(prompt, LineStop(""), max_new=16)
    assert gen.text == "em.err" and backend.stats.heal_retries == 1
    assert fake.requests[-1]["prompt"] == prompt.ids + tiny_tokenizer.encode("Syst")


def test_cancel_closes_the_connection(tiny_tokenizer, backends) -> None:
    fake, backend = backends(tiny_tokenizer, FakeOpenAI(delay_s=0.3), timeout_ms=20_000)
    cancel = threading.Event()
    threading.Timer(0.45, cancel.set).start()
    t0 = time.monotonic()
    gen = backend.complete(_prompt(tiny_tokenizer), LineStop(""), max_new=16, cancel=cancel)
    assert gen.reason == "cancelled" and time.monotonic() - t0 < 1.0
    assert gen.text == "fake"  # what came before the cancel
    deadline = time.monotonic() + 2.0
    while not fake.disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.disconnects, "the server never saw the connection close"
    assert backend.up and backend.stats.cancelled == 1 and backend.take_notice() is None


def test_slow_or_dead_backend_is_down_once_then_probed_back(tiny_tokenizer, backends) -> None:
    fake, backend = backends(tiny_tokenizer, FakeOpenAI(delay_s=0.5), timeout_ms=300, retry_s=0.2)
    t0 = time.monotonic()
    assert backend.complete(_prompt(tiny_tokenizer), LineStop(""), max_new=16) is None
    assert time.monotonic() - t0 < 0.5
    notice, good = backend.take_notice()
    assert "did not answer within 300 ms" in notice and not good
    assert backend.take_notice() is None and not backend.up

    port = fake.port
    fake.stop()  # dead: refused at once, no second notice while down
    fake.delay_s = 0.0
    time.sleep(0.3)
    assert backend.complete(_prompt(tiny_tokenizer), LineStop(""), max_new=16) is None
    assert backend.take_notice() is None
    fake.port = port
    fake.start()  # back: a probe brings the backend up within a few retry periods
    deadline = time.monotonic() + 5.0
    while not backend.available() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.up
    notice, good = backend.take_notice()
    assert "answers again" in notice and good
    assert backend.complete(_prompt(tiny_tokenizer), LineStop(""), max_new=16).text == "fakeRemote(42);"


def test_next_tokens_from_logprobs(tiny_tokenizer, backends) -> None:
    fake, backend = backends(tiny_tokenizer)
    ranked = backend.next_tokens(_prompt(tiny_tokenizer), "", k=5, pieces=8)
    assert [(c.text, round(lp, 3)) for c, lp in ranked] == [
        ("fakeRemote", -0.8),
        ("fake", -2.0),
        ("other", -2.5),
    ]
    assert fake.requests[-1]["logprobs"] == 5 and not fake.requests[-1].get("stream")


def test_rank_tokens_sums_paths_and_attaches_to_the_word_at_the_cursor() -> None:
    tops = [{"em": -0.1, "ring": -2.5}, {".": -0.05, "Exception": -3.0, "();": -4.0}]
    ranked = rank_tokens(tops, ["em", "."], [-0.1, -0.05], "Syst", k=5)
    got = {c: lp for c, lp in ranked}
    ends = -0.1 + math.log(math.exp(-0.05) + math.exp(-4.0))  # "System." and "System();" both end it
    assert got == pytest.approx(
        {
            TokenCandidate("System", True): ends,
            TokenCandidate("Systring", True): -2.5,
            TokenCandidate("SystemException", True): -3.1,
        }
    )
    assert ranked[0][0] == TokenCandidate("System", True)
