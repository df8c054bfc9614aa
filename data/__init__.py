"""Corpus builder: sources, filters, secret scrubbing, dedup, project split, tokenizer."""
