"""Brokers: job records, event history and fan-out (in memory, or Redis)."""

from relay.broker.base import Broker, PublishResult, Subscription

__all__ = ["Broker", "PublishResult", "Subscription"]
