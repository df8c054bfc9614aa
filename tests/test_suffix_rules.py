"""The text after the cursor never makes a suggestion wrong: no early close, no repeated line."""

from __future__ import annotations

from kaffee.server.context import IndentStyle, block_closed_in, block_context
from kaffee.server.postprocess import BlockStop, finish_line, repeats_next_line

STYLE = IndentStyle(tabs=False, width=4)
METHOD_TOP = (
    "class Bank {\n    Account open(String owner) {\n        ",
    "\n        Account a = new Account(owner);\n        return a;\n    }\n\n    void close() {\n    }\n}\n",
)


def test_block_already_closed_by_the_existing_body():
    prefix, suffix = METHOD_TOP
    assert block_closed_in(suffix, "    ")
    ctx = block_context(prefix, suffix)
    assert ctx is not None and ctx.closer_in_suffix
    stop = BlockStop(ctx, 8, STYLE)
    cut = stop.feed("return new Account(owner);\n    }\n")
    assert cut is not None and cut.reason == "block_end"
    assert "}" not in "return new Account(owner);\n    }\n"[: cut.at]


def test_new_method_above_others_still_gets_its_closer():
    prefix = "class Bank {\n    void audit() {\n        "
    suffix = "\n\n    void close() {\n    }\n}\n"  # the only balancing } is the class's, at column 0
    assert not block_closed_in(suffix, "    ")
    ctx = block_context(prefix, suffix)
    assert ctx is not None and not ctx.closer_in_suffix
    cut = BlockStop(ctx, 8, STYLE).feed("log();\n    }\n")
    assert cut is not None and "}" in "log();\n    }\n"[: cut.at]


def test_brackets_inside_strings_and_comments_do_not_count():
    assert not block_closed_in('\n        s = "}";\n        // }\n}\n', "    ")


def test_line_that_repeats_the_next_line_is_dropped():
    assert repeats_next_line("return total;", "        ", "\n        return total;\n    }\n")
    assert not repeats_next_line("return total;", "        x = ", "\n        return total;\n")
    assert finish_line("return total;", "", "        ", STYLE, "\n        return total;\n    }") == ""
    assert (
        finish_line("total += x;", "", "        ", STYLE, "\n        return total;\n    }") == "total += x;"
    )


def test_prompt_window_of_dense_text_fits_its_budget_without_error():
    """Text of many tokens per character (CJK strings) made the window search step past the end."""
    from kaffee.data.tokenizer import KaffeeTokenizer
    from kaffee.models import default_model_dir
    from kaffee.server.context import build_prompt, snap_to_line

    assert snap_to_line("ab\ncd", 99) == 5
    tok = KaffeeTokenizer.from_file(default_model_dir() / "tokenizer.json")
    for prefix in (
        "class A {\n" + '    String s = "' + "キャラクター" * 400,
        "x\n" * 50 + "字" * 3000,
        ("// 日本語のコメント\n" * 200) + "int x = ",
    ):
        for budget in (40, 100, 300):
            prompt = build_prompt(
                tok, prefix, "", budget_tokens=budget, suffix_tokens=0, fim=False, heal=True
            )
            assert len(prompt.ids) <= budget
