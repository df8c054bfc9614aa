"""The tokenizer is lossless and FIM samples decode back to the original file."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from kaffee.training.data import doc_ids, fim_decode, fim_ids

java_text = st.lists(
    st.one_of(
        st.sampled_from(list("publicstaticvoid(){}[];.,=+-*/<>!&|\"' \t\n\r")),
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(["😀", "ñ", "日本", "\r\n", "\t\t", "é", "<|endoftext|>"]),
    ),
    max_size=120,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(java_text)
def test_round_trip(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text
    assert tiny_tokenizer.decode_bytes(tiny_tokenizer.encode(text)) == text.encode()


def test_round_trip_real_java(tiny_tokenizer, java_samples):
    for text in java_samples.values():
        crlf = text.replace("\n", "\r\n").replace("    ", "\t")
        for t in (text, crlf, "// коментар 😀\n" + text):
            assert tiny_tokenizer.decode(tiny_tokenizer.encode(t)) == t


@settings(max_examples=100, deadline=None)
@given(java_text, st.integers(0, 2**31))
def test_fim_sample_decodes_to_original(tiny_tokenizer, text, seed):
    ids = fim_ids(text, tiny_tokenizer, np.random.default_rng(seed))
    assert fim_decode(ids, tiny_tokenizer) == text


def test_doc_ids_fim_rate_is_deterministic(tiny_tokenizer, java_samples):
    text = java_samples["Account.java"]
    a = [doc_ids(text, i, tiny_tokenizer, 0.5, 7) for i in range(40)]
    b = [doc_ids(text, i, tiny_tokenizer, 0.5, 7) for i in range(40)]
    assert a == b
    n_fim = sum(tiny_tokenizer.fim_prefix_id in ids for ids in a)
    assert 8 < n_fim < 32
    assert all(ids[-1] == tiny_tokenizer.eos_id for ids in a)
