"""Helpers of tests/test_break_delivery.py: clients that record a missing close."""
