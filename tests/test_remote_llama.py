"""End to end with a real engine: ``llama_cpp.server`` serves the GGUF export of the tiny model, and
``kaffee serve --backend openai:URL`` answers LSP inline requests from it with the greedy
suggestions of the in-process fp32 engine, line and block; killed, the local model answers.

Needs the ``llama`` extra (llama-cpp-python with its server); skipped without it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from java_samples import SAMPLES
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

MISSING = [
    m
    for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
    if importlib.util.find_spec(m) is None
]
pytestmark = [
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"llama.cpp server not installed (pip install 'kaffee[llama]'; missing {MISSING})",
    ),
    pytest.mark.asyncio(loop_scope="function"),
    pytest.mark.slow,
]

# fp32 and greedy, no reuse of the last suggestion; no project context (the server's would hold the other
# open documents, which the in-process engine does not have)
ENGINE = ["quantize=none", "workspace_cache=off", "project_context=off", "reuse_previous=off", "speculate=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def positions() -> list[tuple[str, str]]:
    """(prefix, suffix) fixture spots: half a code line typed in each sample, and a fresh line after a '{'."""
    spots = []
    for text in SAMPLES.values():
        lines = text.split("\n")
        offsets = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
        code = [
            i for i, ln in enumerate(lines) if len(ln.strip()) > 12 and not ln.strip().startswith(("//", "*"))
        ]
        for i in code[2::7][:3]:
            ln = lines[i]
            cut = offsets[i] + len(ln) - len(ln.lstrip()) + len(ln.strip()) // 2
            spots.append((text[:cut], text[offsets[i] + len(ln) :]))  # the rest of the line is still to type
        opener = next(i for i in code[3:] if lines[i].rstrip().endswith("{"))
        at = offsets[opener + 1]
        indent = lines[opener][: len(lines[opener]) - len(lines[opener].lstrip())] + "    "
        spots.append((text[:at] + indent, "\n" + text[at:]))
    return spots


@pytest.fixture(scope="module")
def llama_server(tiny_model_dir: Path, tmp_path_factory):
    from kaffee.models.export import export_model

    gguf = export_model(tiny_model_dir, "gguf", tmp_path_factory.mktemp("gguf") / "tiny.gguf", dtype="f32")
    port = _free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--interrupt_requests", "False"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start within 120 s")
    yield proc, url
    proc.kill()
    proc.wait()


async def counters(client: LanguageClient) -> dict[str, int]:
    raw: Any = await asyncio.wait_for(client.protocol.send_request_async("kaffee/counters", None), 60)
    return {k: getattr(raw, k) for k in raw._fields} if hasattr(raw, "_fields") else dict(raw)


async def inline(client: LanguageClient, uri: str, text: str, offset: int) -> str:
    before = text[:offset]
    pos = types.Position(line=before.count("\n"), character=len(before) - before.rfind("\n") - 1)
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=pos,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )
    result = await asyncio.wait_for(client.text_document_inline_completion_async(params), 120)
    return result.items[0].insert_text if result and result.items else ""


async def test_llama_cpp_backend_gives_the_in_process_fp32_suggestions(tiny_model_dir: Path, llama_server):
    from kaffee.server.engine import CompletionEngine
    from kaffee.server.options import parse_engine_options

    proc, url = llama_server
    engines = {
        heal: CompletionEngine.from_model_dir(
            tiny_model_dir, parse_engine_options([*ENGINE, f"token_healing={'on' if heal else 'off'}"])
        )
        for heal in (True, False)
    }
    argv = [sys.executable, "-m", "kaffee", "serve", "--model", str(tiny_model_dir), "--log-level", "warning"]
    argv += ["--backend", f"openai:{url}", "--backend-timeout-ms", "20000"]
    for opt in ENGINE:
        argv += ["--engine-option", opt]
    client = await ClientServerConfig(server_command=argv).start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities("visual-studio-code"),
            initialization_options={"deadlineMs": 60_000, "debounceMs": 0},
        )
    )
    try:
        compared, healed_retries, nonempty = 0, 0, 0
        for n, (prefix, suffix) in enumerate(positions()):
            text = prefix + suffix
            uri = f"file:///tmp/kaffee-llama/F{n}.java"
            item = types.TextDocumentItem(uri=uri, language_id="java", version=1, text=text)
            client.text_document_did_open(types.DidOpenTextDocumentParams(item))
            before = await counters(client)
            got = await inline(client, uri, text, len(prefix))
            after = await counters(client)
            assert after["remoteAnswered"] == before.get("remoteAnswered", 0) + 1, after
            retried = after["remoteHealRetries"] > before.get("remoteHealRetries", 0)
            healed_retries += retried
            # the backend's greedy text left the healed bytes: it answered the unhealed prompt
            want = engines[not retried].complete(prefix, suffix).text
            assert got == want, (n, prefix[-60:], suffix[:30], retried)
            compared += 1
            nonempty += bool(got.strip())
        counts = await counters(client)
        assert counts["remoteFallbacks"] == 0 and compared >= 8
        print(f"{compared} spots equal, {nonempty} non-empty, {healed_retries} answered unhealed")
        assert healed_retries < compared and nonempty >= compared // 2  # not a run of empty answers

        proc.kill()  # the backend dies mid-session: the local model (the same fp32 weights) answers
        proc.wait()
        prefix, suffix = positions()[0]
        t0 = time.monotonic()
        got = await inline(client, "file:///tmp/kaffee-llama/F0.java", prefix + suffix, len(prefix))
        assert time.monotonic() - t0 < 60
        assert got == engines[True].complete(prefix, suffix).text  # the same model, in-process
        assert (await counters(client))["remoteFallbacks"] == 1
    finally:
        await client.shutdown_session()
        await client.stop()
