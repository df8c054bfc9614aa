"""Evaluation harness: tasks, metrics, systems under test, reports (`kaffee eval`).

- ``lexer``: Java tokens (the engine's own lexer, with kinds and lines: the unit every task counts in);
- ``metrics``: per-item scores (CodeXGLUE EM / edit similarity, top-k, MRR) and bootstrap aggregation;
- ``system_base`` (the interface), ``system_registry`` (``--system`` kinds -> builders), ``systems``
  / ``lsp_system`` / ``lsp_client``: what is measured (model directories through the completion
  engine, the most-frequent-token baseline, any stdio language server);
- ``typing_replay``: the one model of a user typing with suggestions (typing task, bench/latency.py);
- ``task_*`` and ``tasks`` (the registry): token, line, codexglue-line, bpc, typing;
- ``harness``: seeded positions, the resumable prediction cache, results.json;
- ``report``: results.md, report.html (plots) and ``kaffee eval compare``; ``cli``: the command line.
"""
