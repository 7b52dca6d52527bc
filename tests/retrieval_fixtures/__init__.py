"""Loopback HTTP servers and helpers for the retrieval tests."""
