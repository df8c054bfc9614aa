"""Remote OpenAI-compatible backends: suggestions from a ``/v1/completions`` endpoint.

``kaffee serve --backend openai:URL`` keeps Kaffee's own prompt (window, project head),
stop rules and post-processing, and asks a llama.cpp (``llama-server`` or
``llama_cpp.server``), vLLM, TGI or Ollama server for the greedy continuation instead of
the in-process model. The engine calls one object, :class:`RemoteBackend`, at one seam;
when it answers ``None`` the local model answers.

- Prompts go as token ids where the server takes them (vLLM, ``llama-server``) and as
  text otherwise: the first id-list prompt that gets a 4xx/5xx is retried as text, and
  text is used from then on (``llama_cpp.server`` answers an id list with HTTP 500). A
  one-token warm-up, sent when the backend is built, finds this out (and the model name)
  before the first suggestion needs it.
- Completions are streamed; the stop rule reads the text as it comes, and when it cuts,
  when the editor cancels or supersedes the request, or when time runs out, the stream
  is closed (the connection is dropped, which stops generation on the server).
- Token healing: the prompt is sent with its last pre-token backed off, as in-process.
  When the backend's own greedy text spells the backed-off bytes, that text is exactly
  what Kaffee's constrained decoding would produce (every token taken was allowed, and
  it was the argmax of all, so of the allowed too). When it does not, the stream is
  closed at the first wrong byte and the request is sent again unhealed (the full text).
- A backend that refuses the connection, errs, or does not answer within ``timeout_ms``
  (or before the request's deadline less ``local_reserve_ms``) is marked down: the local
  model answers, one notice is queued for the user and a line logged. While down, a
  background probe (a one-token completion) runs at most every ``retry_s`` seconds; when
  it answers, the backend is up again (and another notice says so).
- The next-token list comes from the backend's ``logprobs`` (the greedy path of the next
  few pieces and the alternatives at each step, cut into whole Java tokens) when it
  returns them; a backend that returns none is remembered and the local model ranks.

One asyncio loop on a daemon thread owns an ``httpx.AsyncClient`` (HTTP/1.1 keep-alive,
pooled connections); the engine's thread waits on each request with its cancel event
and deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.server.cache import logaddexp
from kaffee.server.context import Prompt
from kaffee.server.decode import Generation, TokenCandidate
from kaffee.server.decode import _classify as classify_token  # the beam's one definition of a token end

log = logging.getLogger(__name__)

SCHEMES = ("openai",)
PROBE_TIMEOUT_S = 5.0  # a probe waits this long for its one token


@dataclass(frozen=True)
class RemoteConfig:
    url: str  # base URL of the OpenAI-compatible API, e.g. http://gpu-box:8080/v1
    model: str | None = None  # the request's "model" field (None: the first id of GET /models, if any)
    api_key_env: str | None = None  # environment variable holding a bearer token (None: no auth header)
    timeout_ms: float = 1000.0  # longest wait for one remote answer before the local model answers
    local_reserve_ms: float = 150.0  # of a request's deadline, kept back for the local model
    retry_s: float = 3.0  # while the backend is down, probe it at most this often
    connect_timeout_s: float = 1.0  # TCP connect time-out
    logprobs: int = 5  # alternatives per step asked for the next-token list (0: the local model ranks)
    max_connections: int = 8  # pooled keep-alive connections to the backend

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise KaffeeError(f"remote backend URL {self.url!r} is not an http:// or https:// URL")
        if self.timeout_ms <= 0 or self.retry_s <= 0 or self.connect_timeout_s <= 0:
            raise KaffeeError("remote time-outs must be positive")
        if self.logprobs < 0 or self.max_connections < 1:
            raise KaffeeError("remote logprobs must be >= 0 and max_connections >= 1")


def parse_backend(
    spec: str, model: str | None = None, api_key_env: str | None = None, **fields
) -> RemoteConfig:
    """``openai:URL`` -> RemoteConfig; a URL with no path gets ``/v1``. KaffeeError when it does not parse."""
    scheme, sep, url = spec.strip().partition(":")
    if not sep or scheme.lower() not in SCHEMES or not url.strip():
        raise KaffeeError(f"backend {spec!r} is not openai:URL (e.g. openai:http://127.0.0.1:8080/v1)")
    url = url.strip().rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    if api_key_env is not None and not api_key_env.strip():
        raise KaffeeError("--api-key-env names no environment variable")
    return RemoteConfig(url=url, model=model or None, api_key_env=api_key_env, **fields)


@dataclass
class RemoteStats:
    requests: int = 0  # requests sent to the backend (retries included)
    answered: int = 0  # engine calls the backend answered
    fallbacks: int = 0  # engine calls the local model answered because the backend failed or was down
    heal_retries: int = 0  # completions sent again unhealed because the backend's text left the healed bytes
    cancelled: int = 0  # streams closed because the editor cancelled or superseded the request
    as_text: bool = False  # prompts go as text (the backend refused a token-id list)


class _HttpError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


class _Late(Exception):
    """The backend did not answer in time."""


@dataclass
class _Stream:
    """What a streamed completion has produced so far (written on the loop, read by the waiting thread)."""

    heal: str  # text the continuation must start with
    stop: object  # LineStop / BlockStop: feed(text) -> Cut | None
    text: str = ""  # continuation after the heal
    raw: str = ""  # everything received
    tokens: int = 0  # chunks received (one token each on every server we know)
    reason: str = "length"  # why it ended
    healed_wrong: bool = False  # the text left the healed bytes: send again unhealed

    def feed(self, piece: str, finish: str | None = None) -> bool:
        """Take one piece (``finish``: the server's finish_reason with it); True to close the stream."""
        if finish == "stop":
            self.reason = "eos"  # the model ended the text (or a stop string the server was given)
        if not piece:
            return False
        self.tokens += 1
        self.raw += piece
        if len(self.raw) < len(self.heal):
            if not self.heal.startswith(self.raw):
                self.healed_wrong = True
                return True
            return False
        if not self.raw.startswith(self.heal):
            self.healed_wrong = True
            return True
        after = self.raw[len(self.heal) :]
        cut = self.stop.feed(after)
        if cut is not None:
            self.text, self.reason = after[: cut.at], cut.reason
            return True
        self.text = after
        return False


class RemoteBackend:
    """An OpenAI-compatible ``/v1/completions`` endpoint behind Kaffee's prompt, stop rules and fallback."""

    def __init__(self, config: RemoteConfig, tokenizer: KaffeeTokenizer):
        import httpx  # the server's dependency; imported here so the engine does not need it

        self.config = config
        self.tokenizer = tokenizer
        self.stats = RemoteStats()
        self.send_ids: bool | None = None  # None: not known yet whether the backend takes token ids
        self.has_logprobs: bool | None = None  # None: not known yet
        self.down_reason: str | None = None  # why the backend is considered down (None: up)
        self._model: str | None = config.model
        self._model_known = config.model is not None
        self._notices: list[tuple[str, bool]] = []  # (message, it is good news) for the user
        self._lock = threading.Lock()
        self._probing = False
        self._next_probe = 0.0
        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise KaffeeError(f"--api-key-env {config.api_key_env}: that environment variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kaffee-remote", daemon=True)
        self._thread.start()
        limits = httpx.Limits(
            max_connections=config.max_connections, max_keepalive_connections=config.max_connections
        )
        timeout = httpx.Timeout(None, connect=config.connect_timeout_s)  # the waiting thread keeps time

        async def make_client():
            return httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout, http2=False)

        self._client = self._run_now(make_client())

        async def start_warming():
            return asyncio.ensure_future(self._warm())

        self._warming = self._run_now(start_warming())  # first requests wait for it instead of repeating it

    # -- what the engine asks -------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.down_reason is None

    def available(self) -> bool:
        """Whether to ask the backend now; while it is down, start a probe when one is due."""
        if self.down_reason is None:
            return True
        now = time.monotonic()
        with self._lock:
            due = not self._probing and now >= self._next_probe
            if due:
                self._probing = True
        if due:
            asyncio.run_coroutine_threadsafe(self._probe(), self._loop)
        self.stats.fallbacks += 1  # the local model answers this call
        return False

    def complete(
        self,
        prompt: Prompt,
        stop,
        max_new: int,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation | None:
        """The backend's greedy continuation of ``prompt``, cut by ``stop``; None: the local model answers."""
        limit = self._limit(deadline)
        heal = prompt.heal.decode("utf-8", errors="replace")
        try:
            stream = self._stream_once(prompt.ids, heal, stop, max_new, limit, cancel)
            if stream.healed_wrong and not _cancelled(cancel):
                self.stats.heal_retries += 1
                stream = self._stream_once(
                    prompt.ids + self.tokenizer.encode(heal), "", stop, max_new, limit, cancel
                )
        except Exception as exc:  # refused, reset, HTTP error, too late: the local model answers
            self._failed(exc)
            return None
        self._answered()
        if _cancelled(cancel):
            self.stats.cancelled += 1
            stream.reason = "cancelled"
        return Generation(stream.text, [-1] * stream.tokens, stream.reason)  # ids: not known remotely

    def next_tokens(
        self,
        prompt: Prompt,
        lead: str,
        k: int,
        pieces: int,
        type_depth: int = 0,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> list[tuple[TokenCandidate, float]] | None:
        """Whole Java tokens ranked by the backend's log-probs; None: the local model ranks."""
        if self.config.logprobs <= 0 or self.has_logprobs is False:
            return None
        limit = self._limit(deadline)
        ids = prompt.ids + self.tokenizer.encode(prompt.heal.decode("utf-8", errors="replace"))
        body = {"max_tokens": pieces, "logprobs": self.config.logprobs}
        try:
            choice = self._wait(self._post(ids, body), limit, cancel)
        except _Cancelled:
            self.stats.cancelled += 1
            return []
        except Exception as exc:
            self._failed(exc)
            return None
        self._answered()
        lp = choice.get("logprobs") or {}
        tops, tokens = lp.get("top_logprobs"), lp.get("tokens")
        if not tops or not tokens:
            if self.has_logprobs is None:
                log.info("%s returns no logprobs: the local model ranks the next tokens", self.config.url)
            self.has_logprobs = False
            return None
        self.has_logprobs = True
        return rank_tokens(tops, tokens, lp.get("token_logprobs") or [], lead, k, type_depth)

    def take_notice(self) -> tuple[str, bool] | None:
        """The oldest message for the user about the backend going down or coming back (good news: True)."""
        with self._lock:
            return self._notices.pop(0) if self._notices else None

    def describe(self) -> str:
        return f"{self.config.url}" + (f" ({self._model})" if self._model else "")

    def close(self) -> None:
        try:
            self._run_now(self._client.aclose(), timeout=2.0)
        except Exception:
            log.debug("closing the remote client failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # -- state -------------------------------------------------------------------------------------
    def _limit(self, deadline: float | None) -> float:
        limit = time.monotonic() + self.config.timeout_ms / 1000.0
        if deadline is not None:
            limit = min(limit, deadline - self.config.local_reserve_ms / 1000.0)
        return limit

    def _failed(self, exc: Exception) -> None:
        self.stats.fallbacks += 1
        reason = _describe(exc, self.config)
        with self._lock:
            self._next_probe = time.monotonic() + self.config.retry_s
            if self.down_reason is not None:
                return
            self.down_reason = reason
            message = (
                f"the remote backend {self.config.url} {reason}; suggestions come from the local model "
                f"until it answers again (checked every {self.config.retry_s:g} s)"
            )
            self._notices.append((message, False))
        log.warning("%s", message)

    def _answered(self) -> None:
        self.stats.answered += 1
        self._up()

    def _up(self) -> None:
        with self._lock:
            if self.down_reason is None:
                return
            self.down_reason = None
            message = f"the remote backend {self.config.url} answers again; suggestions come from it"
            self._notices.append((message, True))
        log.warning("%s", message)

    async def _warm(self) -> None:
        """Learn the model name and whether token ids are taken, before the first suggestion needs them."""
        try:
            await asyncio.wait_for(
                self._post([self.tokenizer.eos_id], {"max_tokens": 1}, warm=True), PROBE_TIMEOUT_S
            )
        except Exception as exc:  # the first request will find out, and say so
            log.debug("warming up %s failed: %s", self.config.url, _describe(exc, self.config))

    async def _probe(self) -> None:
        try:
            await asyncio.wait_for(self._post([self.tokenizer.eos_id], {"max_tokens": 1}), PROBE_TIMEOUT_S)
        except Exception as exc:
            log.debug("probe of %s failed: %s", self.config.url, _describe(exc, self.config))
            with self._lock:
                self._next_probe = time.monotonic() + self.config.retry_s
        else:
            self._up()
        finally:
            with self._lock:
                self._probing = False

    # -- HTTP ------------------------------------------------------------------------------------------
    def _run_now(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _wait(self, coro, limit: float, cancel: threading.Event | None):
        """Run ``coro`` on the loop; cancel it (closing its connection) on ``cancel`` or past ``limit``."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        while True:
            try:
                return fut.result(timeout=0.005)
            except concurrent.futures.TimeoutError:  # the builtin TimeoutError only from Python 3.11
                pass
            if _cancelled(cancel):
                fut.cancel()
                raise _Cancelled()
            if time.monotonic() > limit:
                fut.cancel()
                raise _Late()

    def _stream_once(
        self, ids: list[int], heal: str, stop, max_new: int, limit: float, cancel: threading.Event | None
    ) -> _Stream:
        stream = _Stream(heal, stop)
        body = {"max_tokens": max_new, "stream": True}
        try:
            self._wait(self._post(ids, body, stream.feed), limit, cancel)
        except _Cancelled:
            pass  # the text so far; the caller reports it cancelled
        return stream

    async def _resolve_model(self) -> None:
        if self._model_known:
            return
        self._model_known = True
        try:
            r = await self._client.get(self.config.url + "/models", timeout=PROBE_TIMEOUT_S)
            data = r.json().get("data") or []
            self._model = data[0].get("id") if data else None
        except Exception:
            log.debug("GET %s/models failed; requests name no model", self.config.url, exc_info=True)
        log.info("remote backend %s serves model %s", self.config.url, self._model or "(unnamed)")

    async def _post(
        self,
        ids: list[int],
        extra: dict,
        on_piece: Callable[[str, str | None], bool] | None = None,
        warm: bool = False,
    ):
        """POST /completions with ``ids`` (as ids, or as text where ids are refused); the first choice.

        With ``on_piece`` the answer is streamed and each piece handed to it; it returns
        True to close the stream. The result is then None.
        """
        if not warm and not self._warming.done():
            await asyncio.shield(self._warming)
        await self._resolve_model()
        while True:
            as_ids = self.send_ids is not False
            prompt = ids if as_ids else self.tokenizer.decode_bytes(ids).decode("utf-8", errors="replace")
            body = {"prompt": prompt, "temperature": 0.0, "top_p": 1.0, "repeat_penalty": 1.0, **extra}
            if self._model:
                body["model"] = self._model
            try:
                result = await self._request(body, on_piece)
            except _HttpError as exc:
                if as_ids and self.send_ids is None and exc.status in (400, 422, 500):
                    log.info(
                        "%s refused a token-id prompt (%s); sending text from now on", self.config.url, exc
                    )
                    self.send_ids, self.stats.as_text = False, True
                    continue
                raise
            if as_ids and self.send_ids is None:
                self.send_ids = True
            return result

    async def _request(self, body: dict, on_piece: Callable[[str, str | None], bool] | None):
        self.stats.requests += 1
        url = self.config.url + "/completions"
        if on_piece is None:
            r = await self._client.post(url, json=body)
            if r.status_code != 200:
                raise _HttpError(r.status_code, r.text)
            return r.json()["choices"][0]
        async with self._client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                raise _HttpError(r.status_code, (await r.aread()).decode("utf-8", errors="replace"))
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                choice = (json.loads(data).get("choices") or [{}])[0]
                if on_piece(choice.get("text") or "", choice.get("finish_reason")):
                    break  # leaving the block closes the connection: the server stops generating
        return None


class _Cancelled(Exception):
    """The editor cancelled or superseded the request."""


def _cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def _describe(exc: Exception, config: RemoteConfig) -> str:
    if isinstance(exc, _Late):
        return f"did not answer within {config.timeout_ms:g} ms"
    if isinstance(exc, _HttpError):
        return f"answered {exc}"
    name = type(exc).__name__
    text = str(exc) or name
    return f"cannot be reached ({name}: {text[:200]})"


def rank_tokens(
    tops: list[dict[str, float] | None],
    greedy: list[str],
    greedy_logprobs: list[float | None],
    lead: str,
    k: int,
    type_depth: int = 0,
) -> list[tuple[TokenCandidate, float]]:
    """Whole Java tokens from per-step top log-probs along a greedy path (OpenAI ``logprobs``).

    At each step every alternative piece that ends a token (or leaves the path) counts
    for that token with the path's log-prob; the greedy piece extends the path until its
    text ends a token. A token spelled by several pieces sums their mass, as in the beam.
    """
    finished: dict[TokenCandidate, float] = {}

    def add(cand: TokenCandidate, logprob: float) -> None:
        finished[cand] = logaddexp(finished.get(cand, -math.inf), logprob)

    text, path_lp = "", 0.0
    for i, g in enumerate(greedy):
        top = (
            tops[i]
            if i < len(tops) and tops[i]
            else {g: greedy_logprobs[i] if i < len(greedy_logprobs) else 0.0}
        )
        for piece, lp in top.items():
            if piece == g or lp is None:
                continue
            cand, _, _ = classify_token(text + piece, lead, type_depth)
            if cand is not None:
                add(cand, path_lp + lp)
        g_lp = (
            greedy_logprobs[i] if i < len(greedy_logprobs) and greedy_logprobs[i] is not None else top.get(g)
        )
        if g_lp is None:
            break
        text, path_lp = text + g, path_lp + g_lp
        cand, done, _ = classify_token(text, lead, type_depth)
        if done or i == len(greedy) - 1:
            if cand is not None:
                add(cand, path_lp)
            break
    ranked = sorted(finished.items(), key=lambda kv: -kv[1])
    return [(c, lp) for c, lp in ranked[:k] if lp > -math.inf]
