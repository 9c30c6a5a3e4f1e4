"""Soudan triage."""
