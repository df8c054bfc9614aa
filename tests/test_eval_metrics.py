"""Metric functions against hand-computed cases (CodeXGLUE's line-level rules included)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kaffee.evaluation.metrics import (
    accepted_length,
    codexglue_line_scores,
    codexglue_post_process,
    edit_similarity,
    exact_match,
    mean_estimate,
    percentile_estimate,
    rank_of,
    ratio_estimate,
    reciprocal_rank,
    top_k_hit,
)

# -- line level: CodeXGLUE ------------------------------------------------------------------------------


def test_exact_match_compares_whitespace_split_tokens():
    assert exact_match("owner , final Point location )", "owner , final Point location )") == 1.0
    assert exact_match("  owner ,  final Point\tlocation )\n", "owner , final Point location )") == 1.0
    assert exact_match("owner, final Point location)", "owner , final Point location )") == 0.0
    assert exact_match("", "") == 1.0
    assert exact_match("", "x") == 0.0


def test_edit_similarity_is_indel_ratio_times_100():
    # LCS("abc", "abd") = 2 -> 2 * 2 / (3 + 3)
    assert edit_similarity("abc", "abd") == pytest.approx(400 / 6)
    assert edit_similarity("same", "same") == 100.0
    assert edit_similarity("", "abc") == 0.0
    assert edit_similarity("", "") == 100.0
    # the prediction is stripped first (CodeXGLUE: pred.strip()), the target is not
    assert edit_similarity("  abc \n", "abc") == 100.0


def test_codexglue_leaderboard_examples():
    """Ground truths from CodeXGLUE's javaCorpus line-completion answers, scored by its evaluator's rules."""
    # an extra '{' after the gt "owner , final Point location )": LCS 30, lengths 32 + 30
    em, es = codexglue_line_scores("owner , final Point location ) {", "owner , final Point location )")
    assert (em, es) == (0.0, pytest.approx(100 * 60 / 62))
    # literals: the gt's <NUM_LIT:0> becomes 0 before comparing
    assert codexglue_line_scores(" = 0 ; \n", "= <NUM_LIT:0> ;") == (1.0, 100.0)
    # tokens glued together do not split the same way: LCS 8, lengths 8 + 10
    em, es = codexglue_line_scores(">models;", "> models ;")
    assert (em, es) == (0.0, pytest.approx(100 * 16 / 18))
    assert codexglue_line_scores("Ex1 > in1 ;", "Ex1 > in1 ;") == (1.0, 100.0)


def test_codexglue_post_process():
    assert codexglue_post_process('( "<STR_LIT>" )') == '( "" )'
    assert codexglue_post_process("x = <NUM_LIT> ;") == "x = 0 ;"
    assert codexglue_post_process("c = <CHAR_LIT> ;") == "c =  ;"
    assert codexglue_post_process('f ( "<STR_LIT:utf-8>" , <NUM_LIT:16> )') == 'f ( "utf-8" , 16 )'


# -- token level ---------------------------------------------------------------------------------------------


def test_topk_and_mrr():
    ranked = ["owner", "balance", "this", "amount"]
    assert rank_of("balance", ranked) == 2
    assert top_k_hit("balance", ranked, 1) == 0.0
    assert top_k_hit("balance", ranked, 5) == 1.0
    assert reciprocal_rank("balance", ranked) == 0.5
    assert reciprocal_rank("owner", ranked) == 1.0
    assert reciprocal_rank("missing", ranked) == 0.0
    # whole-token equality only: a prefix of the token is wrong
    assert top_k_hit("balance", ["bal", "balances"], 5) == 0.0
    eleven = [f"t{i}" for i in range(10)] + ["x"]
    assert reciprocal_rank("x", eleven, k=10) == 0.0
    assert top_k_hit("t4", eleven, 5) == 1.0 and top_k_hit("t5", eleven, 5) == 0.0


# -- typing ------------------------------------------------------------------------------------------------------


def test_accepted_length():
    assert accepted_length("owner = owner;", "owner = owner;") == 14
    assert accepted_length("owner", "owner = owner;") == 5
    assert accepted_length("owner = owner;  \n", "owner = owner;") == 14
    assert accepted_length("owner=owner;", "owner = owner;") == 0
    assert accepted_length("", "x") == 0
    assert accepted_length("x;\n    y", "x;") == 2  # only the first line is shown inline


# -- aggregation ----------------------------------------------------------------------------------------------------


def test_mean_estimate_interval():
    est = mean_estimate([1.0, 0.0] * 50, scale=100.0, seed=1)
    assert est.value == 50.0 and est.n == 100
    assert 35 < est.low < 50 < est.high < 65
    assert mean_estimate([1.0, 0.0] * 50, 100.0, seed=1) == est  # reproducible
    const = mean_estimate([0.3] * 20)
    assert const.low == pytest.approx(0.3) and const.high == pytest.approx(0.3)
    single = mean_estimate([1.0])
    assert single.value == 1.0 and single.low is None
    assert math.isnan(mean_estimate([]).value)


def test_ratio_and_percentile_estimates():
    est = ratio_estimate([10, 20, 30], [10, 10, 10], seed=0)
    assert est.value == pytest.approx(2.0)
    assert 1.0 <= est.low <= 2.0 <= est.high <= 3.0
    p = percentile_estimate(list(range(1, 101)), 50)
    assert p.value == pytest.approx(50.5)
    assert p.low < p.value < p.high


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=40), st.integers(0, 5))
def test_interval_brackets_the_mean(values, seed):
    est = mean_estimate(values, seed=seed, samples=200)
    assert est.low - 1e-9 <= est.high
    assert min(values) - 1e-9 <= est.low and est.high <= max(values) + 1e-9


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30))
def test_edit_similarity_bounds(a, b):
    s = edit_similarity(a, b)
    assert 0.0 <= s <= 100.0
    assert (s == 100.0) == (a.strip() == b)
