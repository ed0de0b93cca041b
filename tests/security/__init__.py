"""Helpers for the security tests (tests/test_security_*.py)."""
