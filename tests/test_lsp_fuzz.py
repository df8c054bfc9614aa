"""10,000 fuzzed LSP messages and edit sequences against the real ``kaffee serve`` (issue 15).

The generator and the checks are bench/fuzz_lsp.py's (its longer run is the benchmark):
every request with a valid id answered, with a result or a JSON-RPC error, within the
deadline; no crash; afterwards a clean document gets the same suggestions as from a
fresh server.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fuzz_lsp.py"
MESSAGES = 10_000
DEADLINE_S = 20.0  # per answer, on a loaded 2-core machine; typical answers take milliseconds


def _bench():
    spec = importlib.util.spec_from_file_location("fuzz_lsp", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)  # a hard stop; the run itself takes about a minute and a half on 2 cores
def test_fuzzed_messages_all_answered_and_the_server_unharmed(tiny_model_dir: Path) -> None:
    fz = _bench()
    argv = fz.server_argv(tiny_model_dir)
    report = fz.fuzz(argv, MESSAGES, seed=15, deadline_s=DEADLINE_S)
    summary = report.summary()
    assert report.died is None, summary
    assert report.sent == MESSAGES, summary
    assert not report.missing, (report.missing[:10], summary)
    assert not report.late, (report.late[:10], summary)
    assert not report.bad_replies, (report.bad_replies[:5], summary)
    # the mix really covers both kinds of answers and the error codes the guards send
    assert report.results > 100 and report.requests > 2000, summary
    assert {-32600, -32601, -32602} <= set(report.errors), summary
    assert {-32600, -32700} <= set(report.null_id_errors), summary
    assert report.clean is not None and report.clean[0], summary
    assert report.clean == fz.fresh_answers(argv), summary
