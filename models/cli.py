"""`kaffee export`: a Kaffee model directory as a Hugging Face directory or a GGUF file."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("hf", "gguf")  # kept literal (as in models/export.py) so `kaffee --help` imports no torch

EPILOG = """\
examples:
  kaffee export --model models/default --format hf --out exports/kaffee-hf
  kaffee export --model models/default --format gguf --out exports/kaffee.gguf

hf writes config.json, model.safetensors and tokenizer files that transformers' Auto classes,
vLLM and TGI load with no Kaffee code (fp32 by default: the same logits as Kaffee).
gguf writes one llama.cpp file (llama architecture, f16 by default); it needs the `gguf`
package: pip install 'kaffee[export]'. Only gpt models can be exported; lstm and ngram cannot.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a gpt model to a Hugging Face directory or a GGUF file (llama.cpp)",
        description="Export a Kaffee model directory so other engines can serve it: "
        "transformers/vLLM/TGI (hf) or llama.cpp (gguf).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, required=True, help="what to write")
    p.add_argument(
        "--out", type=Path, required=True, help="directory (hf) or file (gguf) to write; must not exist"
    )
    p.add_argument(
        "--dtype",
        choices=("f32", "f16"),
        default=None,
        help="weight precision (default: f32 for hf, f16 for gguf; norms stay f32 in gguf)",
    )
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from kaffee.models import default_model_dir
    from kaffee.models.export import export_model

    model_dir = args.model if args.model is not None else default_model_dir()
    out = export_model(model_dir, args.fmt, args.out, dtype=args.dtype, force=args.force)
    print(f"wrote {args.fmt} export of {model_dir} to {out}")
    return 0
