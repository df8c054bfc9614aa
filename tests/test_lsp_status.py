"""Status and acceptance statistics (issue 12, items 2 and 3).

End to end through ``kaffee serve`` and pytest-lsp: ``$/progress`` around the model
load, ``kaffee/status`` transitions (loading -> ready, and -> fallback when the model
is broken), the ``kaffee.accepted`` command counted into ``$XDG_STATE_HOME`` and read
back by ``kaffee stats``, and nothing written with ``stats: false``. The counting and
summing in ``server/stats.py`` are tested in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kaffee.server.settings import parse_settings
from kaffee.server.stats import StatsRecorder, format_report, read_records, report, stats_path
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

SOURCE = """public class Main {
    public static void main(String[] args) {
        System.out.
    }
}
"""
CURSOR = types.Position(line=2, character=len("        System.out."))
URI = "file:///tmp/kaffee-status/Main.java"
TIMEOUT = 60


# -- in-process: counting, writing, summing -----------------------------------------------------------
def test_stats_path_follows_xdg(tmp_path: Path) -> None:
    assert stats_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "kaffee" / "stats.jsonl"
    default = Path.home() / ".local" / "state" / "kaffee" / "stats.jsonl"
    assert stats_path({}) == default
    assert stats_path({"XDG_STATE_HOME": "relative/dir"}) == default  # the spec: relative is ignored


def test_recorder_counts_offers_accepts_and_partial_accepts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "stats.jsonl"
    rec = StatsRecorder(path, flush_s=3600, clock=lambda: 86400 * 365)
    first = rec.answered("inline", "m1", 40.0, offered_chars=20)
    assert first is not None
    assert rec.answered("inline", "m1", 60.0, offered_chars=0) is None  # an empty answer: no offer
    second = rec.answered("completion", "m2", 10.0, offered_chars=7)
    assert rec.accepted(first, 5)  # accept a word, then the rest, then too much
    assert rec.accepted(first, 10)
    assert rec.accepted(first, 100)
    assert rec.accepted(second, 7)
    assert not rec.accepted("no-such-offer", 3)
    assert not path.exists()  # nothing written until a flush
    rec.flush()
    records, bad = read_records(path)
    assert bad == 0
    by_key = {(r["feature"], r["model"]): r for r in records}
    inline = by_key[("inline", "m1")]
    assert (inline["requests"], inline["shown"], inline["accepted"], inline["accepted_chars"]) == (
        2,
        1,
        1,
        20,
    )
    assert inline["latency_ms"] == 100.0
    assert by_key[("completion", "m2")]["accepted_chars"] == 7
    # more counts append lines; the report sums them
    third = rec.answered("inline", "m1", 20.0, offered_chars=4)
    rec.flush()
    rep = report(read_records(path)[0])
    (total_inline,) = [r for r in rep["total"] if r["feature"] == "inline"]
    assert total_inline["shown"] == 2 and total_inline["accepted"] == 1
    assert total_inline["acceptance_rate"] == 0.5 and total_inline["mean_latency_ms"] == 40.0
    assert third is not None and {r["model"] for r in rep["by_model"]} == {"m1", "m2"}
    assert "per day" in format_report(rep) and "50%" in format_report(rep)


def test_disabled_recorder_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "stats.jsonl"
    rec = StatsRecorder(path, flush_s=3600)
    offer = rec.answered("inline", "m", 1.0, offered_chars=3)
    rec.disable()  # pending counts are dropped, offers forgotten
    assert offer is not None and not rec.accepted(offer, 3)
    assert rec.answered("inline", "m", 1.0, offered_chars=3) is None
    rec.flush()
    assert not path.parent.exists()


def test_unreadable_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "stats.jsonl"
    good = {"day": "2024-05-01", "feature": "inline", "model": "m", "shown": 2, "accepted": 1}
    path.write_text(json.dumps(good) + "\n{broken\n" + json.dumps({"day": 3}) + "\n\n")
    records, bad = read_records(path)
    assert records == [good] and bad == 2


def test_settings_stats_and_enable() -> None:
    settings, problems = parse_settings({"kaffee": {"stats": False, "enable": False}})
    assert (settings.stats, settings.enable, problems) == (False, False, [])
    settings, problems = parse_settings({"stats": "no"})
    assert settings.stats is True and "stats" in problems[0]


# -- end to end -------------------------------------------------------------------------------------
def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(state)}


async def _start(model_dir: Path, state: Path, init_options: Any = None, root: Path | None = None):
    cmd = [sys.executable, "-m", "kaffee", "serve", "--model", str(model_dir), "--log-level", "warning"]
    client = await ClientServerConfig(server_command=cmd, server_env=_env(state)).start()
    client.statuses = []
    client.progress_at_status = []  # the progress reports as they were when each status came

    @client.feature("kaffee/status")
    def status(params: Any) -> None:
        client.statuses.append(params if isinstance(params, dict) else _plain(params))
        client.progress_at_status.append({k: list(v) for k, v in client.progress_reports.items()})

    params = types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),  # window.workDoneProgress: true
        initialization_options=init_options,
        root_uri=root.as_uri() if root else None,
    )
    await client.initialize_session(params)
    return client


def _plain(obj: Any) -> dict[str, Any]:
    """pygls hands params of a method it has no type for as a namedtuple-like object."""
    return {k: getattr(obj, k) for k in obj._fields} if hasattr(obj, "_fields") else dict(vars(obj))


async def _stop(client: LanguageClient) -> None:
    try:
        await asyncio.wait_for(client.shutdown_session(), 30)
    finally:
        await client.stop()


async def _wait_for_state(client: LanguageClient, state: str, after: int = 0) -> dict[str, Any]:
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        for s in client.statuses[after:]:
            if s["state"] == state:
                return s
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {state!r} status within {TIMEOUT} s: {client.statuses}")


def _states(statuses: list[dict[str, Any]]) -> list[str]:
    """The state sequence, latency-only updates collapsed."""
    out: list[str] = []
    for s in statuses:
        if not out or out[-1] != s["state"]:
            out.append(s["state"])
    return out


def _load_progress(client: LanguageClient) -> list[list[Any]]:
    return [
        reports
        for reports in client.progress_reports.values()
        if reports and getattr(reports[0], "title", "").endswith("loading the model")
    ]


def _open(client: LanguageClient, uri: str = URI, text: str = SOURCE) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="java", version=1, text=text)
        )
    )


async def _inline(client: LanguageClient, uri: str = URI) -> types.InlineCompletionList:
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=CURSOR,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )
    return await asyncio.wait_for(client.text_document_inline_completion_async(params), TIMEOUT)


async def _complete(client: LanguageClient, uri: str = URI) -> types.CompletionList:
    params = types.CompletionParams(text_document=types.TextDocumentIdentifier(uri), position=CURSOR)
    return await asyncio.wait_for(client.text_document_completion_async(params), TIMEOUT)


async def _run(client: LanguageClient, command: types.Command) -> Any:
    params = types.ExecuteCommandParams(command=command.command, arguments=command.arguments)
    return await asyncio.wait_for(client.workspace_execute_command_async(params), TIMEOUT)


def _kaffee_stats(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaffee", "stats", *extra],
        env=_env(state),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.asyncio
async def test_progress_and_status_from_loading_to_ready_to_fallback(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    root = tmp_path / "workspace"
    (root / "src").mkdir(parents=True)
    (root / "src" / "Account.java").write_text("public class Account { void deposit(long a) {} }\n")
    client = await _start(tiny_model_dir, tmp_path / "state", {"deadlineMs": 30_000}, root=root)
    try:
        ready = await _wait_for_state(client, "ready")
        assert _states(client.statuses)[:2] == ["loading", "ready"], client.statuses
        assert ready["model"] == str(tiny_model_dir) and ready["device"] == "cpu" and ready["backend"]
        # $/progress around the load: begin, then end, both before "ready"
        (load,) = _load_progress(client)
        assert isinstance(load[0], types.WorkDoneProgressBegin)
        assert isinstance(load[-1], types.WorkDoneProgressEnd)
        at_ready = client.progress_at_status[client.statuses.index(ready)]
        (load_then,) = [r for r in at_ready.values() if r and r[0].title.endswith("loading the model")]
        assert isinstance(load_then[-1], types.WorkDoneProgressEnd), load_then
        # the workspace index reports too
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and not any(
            r
            and getattr(r[0], "title", "").endswith("indexing the workspace")
            and isinstance(r[-1], types.WorkDoneProgressEnd)
            for r in client.progress_reports.values()
        ):
            await asyncio.sleep(0.05)
        assert any(
            "1 Java files indexed" == getattr(r[-1], "message", None)
            for r in client.progress_reports.values()
        )
        # an answer brings the latency (at most every few seconds)
        _open(client)
        assert (await _inline(client)).items
        end = time.monotonic() + 10
        while time.monotonic() < end and client.statuses[-1]["latencyMs"] is None:
            await asyncio.sleep(0.05)
        assert client.statuses[-1]["latencyMs"] > 0 and client.statuses[-1]["state"] == "ready"
        # a broken model: loading, then answers from the n-gram fallback
        seen = len(client.statuses)
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"kaffee": {"modelPath": str(broken)}})
        )
        fallback = await _wait_for_state(client, "fallback", after=seen)
        assert _states(client.statuses[seen:]) == ["loading", "fallback"], client.statuses[seen:]
        assert fallback["model"] == str(broken) and "cannot load" in fallback["message"]
        assert len(_load_progress(client)) == 2 and all(
            isinstance(p[-1], types.WorkDoneProgressEnd) for p in _load_progress(client)
        )
        # turned off: "disabled", and nothing is suggested
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"kaffee": {"enable": False}})
        )
        await _wait_for_state(client, "disabled", after=seen)
        assert not (await _inline(client)).items and not (await _complete(client)).items
    finally:
        await _stop(client)


@pytest.mark.asyncio
async def test_accepting_through_the_command_is_counted_and_kaffee_stats_reports_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    client = await _start(tiny_model_dir, state, {"deadlineMs": 30_000})
    try:
        _open(client)
        (item,) = (await _inline(client)).items
        assert item.command is not None and item.command.command == "kaffee.accepted"
        offer, feature, chars = item.command.arguments
        assert feature == "inline" and chars == len(item.insert_text)
        assert await _run(client, item.command) is None
        assert await _run(client, item.command) is None  # run twice: still one accept
        listed = await _complete(client)
        take = listed.items[0]
        assert take.command is not None and take.command.arguments[1] == "completion"
        assert take.command.arguments[2] == len(take.text_edit.new_text)
        await _run(client, take.command)
        await _inline(client)  # shown, never accepted
        await _run(
            client, types.Command(title="", command="kaffee.accepted", arguments=["bogus", "inline", 9])
        )
    finally:
        await _stop(client)  # shutdown writes what is pending
    assert (state / "kaffee" / "stats.jsonl").is_file()
    out = _kaffee_stats(state, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["file"] == str(state / "kaffee" / "stats.jsonl")
    total = {r["feature"]: r for r in rep["total"]}
    assert (total["inline"]["shown"], total["inline"]["accepted"]) == (2, 1)
    assert total["inline"]["accepted_chars"] == len(item.insert_text)
    assert total["inline"]["acceptance_rate"] == 0.5
    assert (total["completion"]["shown"], total["completion"]["accepted"]) == (1, 1)
    assert total["completion"]["accepted_chars"] == len(take.text_edit.new_text)
    assert [r["model"] for r in rep["by_model"]] == [str(tiny_model_dir)] * 2
    assert len(rep["by_day"]) == 2 and rep["by_day"][0]["day"] == time.strftime("%Y-%m-%d")
    text = _kaffee_stats(state)
    assert text.returncode == 0 and "50%" in text.stdout and str(tiny_model_dir) in text.stdout, text.stdout
    elsewhere = _kaffee_stats(tmp_path / "other", "--file", str(state / "kaffee" / "stats.jsonl"), "--json")
    assert json.loads(elsewhere.stdout)["total"] == rep["total"]


@pytest.mark.asyncio
async def test_with_stats_off_nothing_is_written(tiny_model_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    client = await _start(tiny_model_dir, state, {"deadlineMs": 30_000, "stats": False})
    try:
        _open(client)
        (item,) = (await _inline(client)).items
        assert item.command is None  # nothing to run on accept
        assert all(i.command is None for i in (await _complete(client)).items)
        await _run(client, types.Command(title="", command="kaffee.accepted", arguments=["x", "inline", 3]))
    finally:
        await _stop(client)
    assert not state.exists(), list(state.rglob("*"))
    out = _kaffee_stats(state)
    assert out.returncode == 0 and "no statistics" in out.stdout
