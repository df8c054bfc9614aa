"""Completion engine and the pygls language server."""
