"""The `lsp:` system: a stdio language server driven like an editor, with time-outs and crashes.

A small fake server (written below, run as a subprocess) knows the held-out files and
answers like the in-process oracle, so the LSP path (document sync, UTF-16 positions,
ranges, result parsing) must reproduce the oracle's numbers exactly. The real
`kaffee serve` is compared with the in-process engine when both exist.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from eval_fixtures import TEST_FILES, OracleSystem, RandomSystem, make_corpus
from kaffee.evaluation.harness import EvalConfig, run_evaluation
from kaffee.evaluation.lsp_system import LspSystem, lsp_position
from kaffee.evaluation.system_base import Context, SystemUnavailable
from kaffee.evaluation.system_registry import parse_system_spec

FAKE_SERVER = textwrap.dedent(
    r"""
    import json, sys, urllib.parse
    mode = sys.argv[1]
    files = json.load(open(sys.argv[2]))  # "project/path" -> text
    if mode == "nostart":
        print("fake server: cannot load model", file=sys.stderr)
        sys.exit(3)
    from kaffee.evaluation.lexer import lex
    docs = {}
    inp, out = sys.stdin.buffer, sys.stdout.buffer

    def send(msg):
        body = json.dumps(msg).encode()
        out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        out.flush()

    def offset(text, pos):  # UTF-16 columns
        lines = text.split("\n")
        off = sum(len(x) + 1 for x in lines[: pos["line"]])
        units = 0
        for ch in lines[pos["line"]]:
            if units >= pos["character"]:
                break
            units += 2 if ord(ch) > 0xFFFF else 1
            off += 1
        return off

    def original(uri):
        path = urllib.parse.unquote(urllib.parse.urlparse(uri).path)
        for key, text in files.items():
            if path.endswith("/" + key):
                return text
        return ""

    while True:
        length = None
        while True:
            line = inp.readline()
            if not line:
                sys.exit(0)
            if not line.strip():
                break
            if line.lower().startswith(b"content-length"):
                length = int(line.split(b":")[1])
        msg = json.loads(inp.read(length))
        method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": rid, "result": {"capabilities": {
                "textDocumentSync": 1, "completionProvider": {}, "inlineCompletionProvider": True}}})
            send({"jsonrpc": "2.0", "id": 99, "method": "workspace/configuration", "params": {"items": [{}]}})
        elif method == "textDocument/didOpen":
            docs[params["textDocument"]["uri"]] = params["textDocument"]["text"]
        elif method == "textDocument/didChange":
            docs[params["textDocument"]["uri"]] = params["contentChanges"][-1]["text"]
        elif method == "shutdown":
            send({"jsonrpc": "2.0", "id": rid, "result": None})
        elif method == "exit":
            sys.exit(0)
        elif method in ("textDocument/completion", "textDocument/inlineCompletion"):
            if mode == "silent":
                continue
            if mode == "crash":
                sys.exit(1)
            uri = params["textDocument"]["uri"]
            doc = docs[uri]
            cur = offset(doc, params["position"])
            full = original(uri)
            assert full.startswith(doc[:cur]), "document out of sync"
            toks = lex(full)
            if method == "textDocument/completion":
                nxt = [t.text for t in toks if t.start >= cur][:1]
                # a decoy first by label, the right answer first by sortText
                items = [{"label": "zzz", "sortText": "9"}] + [{"label": t, "sortText": "0"} for t in nxt]
                send({"jsonrpc": "2.0", "id": rid, "result": {"isIncomplete": False, "items": items}})
            else:
                end = full.find("\n", cur)
                on_line = [t for t in toks if t.end > cur and t.end <= end]
                text = full[cur : on_line[-1].end] if on_line else ""
                # re-type the word before the cursor through a range, as some servers do
                start = cur
                while start > 0 and (doc[start - 1].isalnum() or doc[start - 1] == "_"):
                    start -= 1
                lines = doc[:start].split("\n")
                col = len(lines[-1].encode("utf-16-le")) // 2
                item = {"insertText": doc[start:cur] + text,
                        "range": {"start": {"line": len(lines) - 1, "character": col}, "end": params["position"]}}
                send({"jsonrpc": "2.0", "id": rid, "result": {"items": [item]}})
        elif rid is not None and method:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}})
    """
)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake-lsp")
    (d / "server.py").write_text(FAKE_SERVER)
    (d / "files.json").write_text(json.dumps({f"{p}/{path}": t for (p, path), t in TEST_FILES.items()}))
    return lambda mode: f"lsp:{sys.executable} {d / 'server.py'} {mode} {d / 'files.json'}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c")


def _lsp(spec: str, timeout: float = 10.0, start_timeout: float = 20.0) -> LspSystem:
    from kaffee.evaluation.system_base import SystemSettings
    from kaffee.evaluation.system_registry import build_system

    settings = SystemSettings(lsp_timeout=timeout, lsp_start_timeout=start_timeout)
    return build_system(parse_system_spec(spec), settings)


def test_lsp_position_counts_utf16_units():
    assert lsp_position("ab\ncd") == {"line": 1, "character": 2}
    assert lsp_position("x\n😀a") == {"line": 1, "character": 3}
    assert lsp_position("") == {"line": 0, "character": 0}


def test_lsp_system_matches_the_in_process_oracle(fake, corpus, tmp_path):
    base = dict(
        corpus=str(corpus), tasks=["token", "line", "typing"], limit=15, typing_lines=2, progress=False
    )
    in_process = run_evaluation(EvalConfig(out=str(tmp_path / "a"), **base), systems=[OracleSystem()])
    system = _lsp(fake("ok"))
    system.label = "oracle"
    over_lsp = run_evaluation(EvalConfig(out=str(tmp_path / "b"), **base), systems=[system])

    def numbers(res):
        return {
            (r["task"], r["metric"], r["slice"]): r["value"]
            for r in res["results"]
            if not r["metric"].startswith("latency")
        }

    assert numbers(over_lsp) == numbers(in_process)
    assert all(r["errors"] in (0, None) for r in over_lsp["results"])
    cost = over_lsp["systems"][0]["cost"]  # read from the server process, not this one
    assert cost["memory_mb"] > 0 and set(cost["cpu_ms"]) == {"token", "line", "typing"}
    assert numbers(over_lsp)[("token", "top1", "all")] == 100.0


def test_lsp_server_that_never_answers_times_out_and_the_run_goes_on(fake, corpus, tmp_path):
    silent = _lsp(fake("silent"), timeout=0.3, start_timeout=1.0)  # the first request may wait 1 s
    results = run_evaluation(
        EvalConfig(out=str(tmp_path / "r"), corpus=str(corpus), tasks=["token"], limit=8, progress=False),
        systems=[silent, RandomSystem()],
    )
    rows = {(r["system"], r["metric"]): r for r in results["results"] if r["slice"] == "all"}
    silent_top1 = rows[(silent.label, "top1")]
    assert silent_top1["errors"] == 8 and silent_top1["value"] == 0.0
    assert ("random", "top1") in rows
    assert any("got no answer" in n for n in results["notes"])


def test_lsp_server_that_crashes_is_an_error_per_request(fake):
    system = _lsp(fake("crash"))
    from kaffee.evaluation.system_base import RequestFailed

    ctx = Context(prefix="class A {", suffix="", project="bank", path="src/Account.java")
    for _ in range(4):  # restarted twice, then given up; every request fails cleanly
        with pytest.raises(RequestFailed):
            system.complete(ctx)
    system.close()


def test_lsp_server_that_does_not_start(fake, corpus, tmp_path):
    with pytest.raises(SystemUnavailable, match="(?s)did not start.*cannot load model"):
        _lsp(fake("nostart"))
    with pytest.raises(SystemUnavailable, match="cannot start"):
        _lsp("lsp:/nonexistent/kaffee-lsp-binary --stdio")
    config = EvalConfig(
        out=str(tmp_path / "r"),
        corpus=str(corpus),
        systems=["lsp:/nonexistent/kaffee-lsp-binary", "mft"],
        tasks=["token"],
        limit=5,
        progress=False,
    )
    results = run_evaluation(config)
    assert {r["system"] for r in results["results"]} == {"mft"}
    assert any("did not start" in p["message"] for p in results["problems"])


def test_kaffee_serve_gives_the_in_process_numbers(tiny_ngram_dir, corpus, tmp_path):
    """`lsp:kaffee serve` and the in-process engine answer the same positions the same way."""
    pytest.importorskip("kaffee.server.engine")
    pytest.importorskip("kaffee.server.lsp")
    base = dict(
        corpus=str(corpus), tasks=["token", "line", "typing"], limit=10, typing_lines=2, progress=False
    )
    in_process = run_evaluation(
        EvalConfig(
            out=str(tmp_path / "a"), systems=[f"ngram:{tiny_ngram_dir},cache=off,project=off,label=m"], **base
        )
    )
    over_lsp = run_evaluation(
        EvalConfig(
            out=str(tmp_path / "b"),
            systems=[f"lsp:kaffee serve --model {tiny_ngram_dir}"],
            lsp_timeout=30,
            # the server's own cache rebuilds on a timer and its deadline depends on the machine:
            # switch both off to compare like with like
            lsp_init_options={"workspaceContext": False, "deadlineMs": 600000},
            **base,
        )
    )
    assert not over_lsp["problems"], over_lsp["problems"]

    def numbers(res):
        return {
            (r["task"], r["metric"], r["slice"]): r["value"]
            for r in res["results"]
            if not r["metric"].startswith("latency")
        }

    assert numbers(over_lsp) == numbers(in_process)
    assert numbers(in_process)[("token", "top1", "all")] > 0
