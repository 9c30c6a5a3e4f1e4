"""Soudan dispatch."""
