"""Soudan allinone."""
