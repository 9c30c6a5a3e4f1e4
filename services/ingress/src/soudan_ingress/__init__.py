"""Soudan ingress."""
