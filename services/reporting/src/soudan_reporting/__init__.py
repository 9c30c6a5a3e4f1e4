"""Soudan reporting."""
