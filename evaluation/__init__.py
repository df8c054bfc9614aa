"""Evaluation harness: tasks, metrics, systems under test, reports."""
