"""The job state each event leads to, shared by the brokers so they agree."""

from __future__ import annotations

from relay.events import EventType, JobState

# The state an event moves a job into, and the states it may move it from.
# A `queued` that arrives after `started` (the job started before qsub returned)
# leaves the job running.
STATE_AFTER: dict[str, tuple[JobState, frozenset[JobState]]] = {
    EventType.QUEUED: (JobState.QUEUED, frozenset({JobState.STARTING})),
    EventType.STARTED: (JobState.RUNNING, frozenset({JobState.STARTING, JobState.QUEUED})),
    EventType.COMPLETE: (JobState.COMPLETED, frozenset(JobState)),
    EventType.FATAL: (JobState.FAILED, frozenset(JobState)),
    EventType.CANCELLED: (JobState.CANCELLED, frozenset(JobState)),
}

TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


def next_state(current: str, event_type: str) -> str:
    change = STATE_AFTER.get(event_type)
    if change is None or current not in change[1]:
        return current
    return change[0].value
