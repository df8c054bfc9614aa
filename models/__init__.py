"""Shipped model directories (package data)."""
