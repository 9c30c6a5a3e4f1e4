"""Soudan console."""
