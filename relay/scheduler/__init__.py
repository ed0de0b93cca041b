"""Schedulers: where job scripts run (this machine, or a PBS cluster over SSH)."""
