"""Parse the output of one batched ``qstat`` call into the state of each listed job.

The watchdog runs one ``qstat`` per cluster for all the jobs it tracks (``status_command``) and
parses stdout with ``detect_and_parse`` or the parser of the cluster's flavour:

- ``pbs``: OpenPBS and PBS Professional, ``qstat -x -f -F json``. With ``-x`` finished jobs stay
  listed, in state F, for as long as the server keeps job history (``job_history_enable``).
- ``torque``: Torque, ``qstat -f -x`` (XML). Finished jobs stay listed, in state C, until the
  server purges them.
- ``slurm-torque``: the Perl ``qstat`` wrapper of Slurm (Debian package slurm-wlm-torque),
  ``qstat -f``. It has no ``-x``, prints ``job_state = C`` for every ended job whatever the cause,
  prints no exit status, and stops listing a job once slurmctld purges it (MinJobAge, 300 s by
  default in Slurm 22.05).

A job that an earlier ``qstat`` listed and a later successful ``qstat`` does not list has ended,
with an unknown exit status. The parsers report only what one output contains, so the caller
keeps the set of jobs it has seen and applies that rule.

PBS and Torque exit non-zero when any requested id is unknown, write ``qstat: Unknown Job Id ...``
to stderr, and still print the other jobs. The Slurm wrapper prints nothing for an unknown id and
exits 153 only when it lists none of the requested jobs. So parse stdout whatever the exit status,
and pass stderr to ``unknown_job_ids``.
"""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from signal import Signals
from typing import Any, Final, NamedTuple


class SchedulerState(StrEnum):
    """Job state shared by all flavours. ``JobStatus.raw_state`` keeps the scheduler's own code."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    HELD = "held"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"


QUEUED: Final = SchedulerState.QUEUED
RUNNING: Final = SchedulerState.RUNNING
FINISHED: Final = SchedulerState.FINISHED
HELD: Final = SchedulerState.HELD
SUSPENDED: Final = SchedulerState.SUSPENDED
UNKNOWN: Final = SchedulerState.UNKNOWN


@dataclass(frozen=True)
class JobStatus:
    """State of one job as one ``qstat`` output reported it.

    ``exit_status`` is the scheduler's number, unchanged: negative for the scheduler's own
    JOB_EXEC_* codes, 256 + N for a job killed by signal N. It is set only for FINISHED jobs,
    because a queued or running job can carry the status of an earlier failed start. ``reason``
    is text for people: the cause of the end of a finished job, otherwise the scheduler's
    comment. ``signal`` is the signal number for an exit status above 256.
    """

    scheduler_id: str
    state: SchedulerState
    exit_status: int | None
    reason: str | None
    raw_state: str
    signal: int | None = None
    comment: str | None = None


class ExecCode(NamedTuple):
    """A special exit status that the scheduler sets in place of the job script's status."""

    name: str
    reason: str


# JOB_EXEC_* values of OpenPBS src/include/job.h ("Special Job Exit Values, Set by the job
# starter"), read at commit 1dd4c360cba2608f3de4f93e065b68b1070d1810 of openpbs/openpbs. PBS
# Professional shares that code. The reasons paraphrase the header's comments.
PBS_EXEC_CODES: Final[Mapping[int, ExecCode]] = {
    -1: ExecCode("JOB_EXEC_FAIL1", "job start failed before files were staged, not retried"),
    -2: ExecCode("JOB_EXEC_FAIL2", "job start failed after files were staged, not retried"),
    -3: ExecCode("JOB_EXEC_RETRY", "job start failed, to be retried"),
    -4: ExecCode("JOB_EXEC_INITABT", "node failure: job aborted when pbs_mom restarted"),
    -5: ExecCode("JOB_EXEC_INITRST", "node failure: job aborted when pbs_mom restarted"),
    -6: ExecCode("JOB_EXEC_INITRMG", "node failure: job aborted when pbs_mom restarted"),
    -7: ExecCode("JOB_EXEC_BADRESRT", "job restart from checkpoint failed"),
    -10: ExecCode("JOB_EXEC_FAILUID", "invalid user or group id for the job"),
    -11: ExecCode("JOB_EXEC_RERUN", "job rerun"),
    -12: ExecCode("JOB_EXEC_CHKP", "job checkpointed and killed"),
    -13: ExecCode("JOB_EXEC_FAIL_PASSWORD", "job start failed: bad password"),
    -14: ExecCode("JOB_EXEC_RERUN_SIS_FAIL", "node failure: job rerun after a sister node failed"),
    -15: ExecCode("JOB_EXEC_QUERST", "job requeued for restart from checkpoint"),
    -16: ExecCode("JOB_EXEC_FAILHOOK_RERUN", "a hook rejected the job start, job requeued"),
    -17: ExecCode("JOB_EXEC_FAILHOOK_DELETE", "a hook rejected the job start, job deleted"),
    -18: ExecCode("JOB_EXEC_HOOK_RERUN", "a hook requeued the job"),
    -19: ExecCode("JOB_EXEC_HOOK_DELETE", "a hook deleted the job"),
    -20: ExecCode(
        "JOB_EXEC_RERUN_MS_FAIL", "node failure: connection to the mother superior node failed"
    ),
    -21: ExecCode("JOB_EXEC_FAIL_SECURITY", "job start failed: security breach in PBS directory"),
    -22: ExecCode("JOB_EXEC_HOOKERROR", "job start failed: a hook raised an error or timed out"),
    -23: ExecCode("JOB_EXEC_FAIL_KRB5", "job start failed: no Kerberos credentials"),
    -24: ExecCode("JOB_EXEC_KILL_NCPUS_BURST", "CPU usage limit (burst) exceeded"),
    -25: ExecCode("JOB_EXEC_KILL_NCPUS_SUM", "CPU usage limit (sum) exceeded"),
    -26: ExecCode("JOB_EXEC_KILL_VMEM", "virtual memory limit exceeded"),
    -27: ExecCode("JOB_EXEC_KILL_MEM", "memory limit exceeded"),
    -28: ExecCode("JOB_EXEC_KILL_CPUT", "CPU time limit exceeded"),
    -29: ExecCode("JOB_EXEC_KILL_WALLTIME", "walltime exceeded"),
    -30: ExecCode("JOB_EXEC_JOINJOB", "job start failed: sister nodes could not join the job"),
}

# JOB_EXEC_* values of Torque src/include/pbs_job.h, read at commit
# 0111293d427459c61a47f109e3584c1fd73d0bde of adaptivecomputing/torque. The same numbers mean
# other things in PBS: -11 is a walltime kill here and a rerun there.
TORQUE_EXEC_CODES: Final[Mapping[int, ExecCode]] = {
    -1: ExecCode("JOB_EXEC_FAIL1", "job start failed before files were staged, not retried"),
    -2: ExecCode("JOB_EXEC_FAIL2", "job start failed after files were staged, not retried"),
    -3: ExecCode("JOB_EXEC_RETRY", "job start failed, to be retried"),
    -4: ExecCode("JOB_EXEC_INITABT", "node failure: job aborted when pbs_mom restarted"),
    -5: ExecCode("JOB_EXEC_INITRST", "node failure: job aborted when pbs_mom restarted"),
    -6: ExecCode("JOB_EXEC_INITRMG", "node failure: job aborted when pbs_mom restarted"),
    -7: ExecCode("JOB_EXEC_BADRESRT", "job restart from checkpoint failed"),
    -8: ExecCode("JOB_EXEC_CMDFAIL", "job start failed: exec() of the job command failed"),
    -9: ExecCode("JOB_EXEC_STDOUTFAIL", "job start failed: cannot create stdout or stderr file"),
    -10: ExecCode("JOB_EXEC_OVERLIMIT_MEM", "memory limit exceeded"),
    -11: ExecCode("JOB_EXEC_OVERLIMIT_WT", "walltime exceeded"),
    -12: ExecCode("JOB_EXEC_OVERLIMIT_CPUT", "CPU time limit exceeded"),
}

# The PBS and Torque MoM report a job killed by signal N as 256 + N, because scan_for_terminated()
# sets WTERMSIG(status) + 0x100, as the OSC mpiexec launcher quotes it in its source. A Torque job
# deleted by the server shows exit_status 271, signal 15 (tests/data/qstat/SOURCES.md).
SIGNAL_EXIT_OFFSET: Final = 256

# Job state letters of OpenPBS (JOB_STATE_LTR_* in src/include/job.h), described as PBS
# Professional 13.1 documents its pbs.JOB_STATE_* constants.
_PBS_STATES: Final[Mapping[str, SchedulerState]] = {
    "B": RUNNING,  # array job with at least one subjob started
    "E": RUNNING,  # exiting after having run, and F follows
    "F": FINISHED,
    "H": HELD,
    "M": UNKNOWN,  # moved to another server, which tracks it from now on
    "Q": QUEUED,
    "R": RUNNING,
    "S": SUSPENDED,
    "T": QUEUED,  # in transit to a new location
    "U": SUSPENDED,  # suspended because the workstation became busy
    "W": QUEUED,  # waiting for its execution time, or after a failed stage-in
    "X": FINISHED,  # finished subjob of an array job
}

# Torque's letters, as listed in the manual page of the Slurm wrapper, which copies them.
_TORQUE_STATES: Final[Mapping[str, SchedulerState]] = {
    "C": FINISHED,
    "E": RUNNING,  # exiting after having run, and C follows
    "H": HELD,
    "Q": QUEUED,
    "R": RUNNING,
    "S": SUSPENDED,
    "T": QUEUED,
    "W": QUEUED,
}

# The text form comes from Torque, PBS and the Slurm wrapper, so it takes every letter. U is the
# Slurm wrapper's "unknown" (its stateCode()), which wins over the rare PBS user suspension.
_TEXT_STATES: Final[Mapping[str, SchedulerState]] = {**_PBS_STATES, **_TORQUE_STATES, "U": UNKNOWN}

# qstat lists Variable_List, the job's whole environment, so one job takes a few kilobytes.
# NOTE: an estimate for about 3,000 jobs of 10 KB per call, not a measured limit.
MAX_OUTPUT_CHARS: Final = 32 * 1024 * 1024

_STATUS_OPTIONS: Final[Mapping[str, str]] = {
    "pbs": "qstat -x -f -F json",
    "torque": "qstat -f -x",
    "slurm-torque": "qstat -f",
}
FLAVOURS: Final = tuple(_STATUS_OPTIONS)

# Unknown ids appear as "qstat: Unknown Job Id 1234.server" (OpenPBS) or "qstat: Unknown Job Id
# Error 1234.server" (Torque). PBS prints "qstat: 1234.server Job has finished, use -x or -H ..."
# when a finished job is queried without -x.
_UNKNOWN_JOB_ID: Final = re.compile(r"^qstat: Unknown Job Id(?: Error)? (\S+)\s*$", re.MULTILINE)
_FINISHED_JOB_ID: Final = re.compile(r"^qstat: (\S+) Job has finished\b", re.MULTILINE)

_JOB_HEADER: Final = re.compile(r"^Job Id:\s*(\S+)\s*$")
_ATTRIBUTE_LINE: Final = re.compile(r"^([ \t]+)([A-Za-z_][\w.]*) =(?: (.*))?$")
_XML_DECLARATION: Final = re.compile(r"<\?xml[^>]*\?>")
# Variable_List contains the job's environment, which can include control characters such as ESC
# that XML 1.0 forbids. fyrd strips ESC from Torque's output for that reason.
_INVALID_XML_CHARACTERS: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_DELETED_COMMENT: Final = re.compile(r"\bdeleted\b", re.IGNORECASE)


def parse_pbs_json(text: str) -> dict[str, JobStatus]:
    """Parse ``qstat -x -f -F json`` of OpenPBS or PBS Professional, keyed by job id.

    Whitespace-only text, or a document without ``Jobs`` (PBS omits it when no requested job
    exists), gives an empty dict. Raises ValueError on invalid JSON or a job without job_state.
    """
    _check_size(text)
    statuses: dict[str, JobStatus] = {}
    for document in _json_documents(text):
        if not isinstance(document, dict):
            raise ValueError(f"qstat JSON output is a {type(document).__name__}, not an object")
        jobs = document.get("Jobs", {})
        if not isinstance(jobs, dict):
            raise ValueError("qstat JSON output has a 'Jobs' member that is not an object")
        for scheduler_id, job in jobs.items():
            if not isinstance(job, dict):
                raise ValueError(f"qstat JSON output has job {scheduler_id} that is not an object")
            attributes: dict[str, str] = {}
            _flatten_json("", job, attributes)
            statuses[scheduler_id] = _job_status(
                scheduler_id, attributes, _PBS_STATES, PBS_EXEC_CODES
            )
    return statuses


def parse_torque_xml(text: str) -> dict[str, JobStatus]:
    """Parse Torque's ``qstat -f -x`` XML, keyed by job id.

    Accepts one or several ``<Data>`` documents. Entities are not resolved: text with a DTD is
    rejected, since qstat never prints one. Whitespace-only text gives an empty dict. Raises
    ValueError on invalid XML or a job without Job_Id or job_state.
    """
    _check_size(text)
    if not text.strip():
        return {}
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise ValueError("qstat XML output contains a DTD, which qstat never prints")
    cleaned = _INVALID_XML_CHARACTERS.sub("", _XML_DECLARATION.sub("", text))
    try:
        # A synthetic root lets several <Data> documents, one after the other, parse as one.
        root = ElementTree.fromstring(f"<qstat>{cleaned}</qstat>")
    except ElementTree.ParseError as error:
        raise ValueError(f"qstat XML output is invalid: {error}") from error
    stray_text = (root.text or "").strip()
    if stray_text:
        raise ValueError(f"qstat XML output has text outside <Data>: {stray_text[:80]!r}")

    statuses: dict[str, JobStatus] = {}
    for data in root:
        if data.tag != "Data" or (data.tail or "").strip():
            raise ValueError(f"qstat XML output has <{data.tag}> where <Data> was expected")
        for job in data:
            if job.tag != "Job":
                raise ValueError(f"qstat XML output has <{job.tag}> where <Job> was expected")
            scheduler_id = (job.findtext("Job_Id") or "").strip()
            if not scheduler_id:
                raise ValueError("qstat XML output has a <Job> without Job_Id")
            attributes: dict[str, str] = {}
            _flatten_xml("", job, attributes)
            statuses[scheduler_id] = _job_status(
                scheduler_id, attributes, _TORQUE_STATES, TORQUE_EXEC_CODES
            )
    return statuses


def parse_torque_text(text: str) -> dict[str, JobStatus]:
    """Parse the ``qstat -f`` text form of Torque, PBS or the Slurm wrapper, keyed by job id.

    Each job starts with ``Job Id: <id>``, followed by indented ``name = value`` lines. Torque and
    PBS wrap long values onto continuation lines with another indent, such as a tab where
    attributes have four spaces. A value can even contain an unindented line. All such lines
    join the previous value. Exit statuses use the PBS table when the attribute is spelt
    ``Exit_status`` (PBS) and the Torque table when it is ``exit_status``. Whitespace-only text
    gives an empty dict. Raises ValueError on text before the first ``Job Id:`` line or a job
    without job_state.
    """
    _check_size(text)
    statuses: dict[str, JobStatus] = {}
    scheduler_id: str | None = None
    attributes: dict[str, str] = {}
    indent: str | None = None
    last_name: str | None = None

    for number, line in enumerate(text.splitlines(), start=1):
        header = _JOB_HEADER.match(line)
        if header:
            if scheduler_id is not None:
                statuses[scheduler_id] = _text_job_status(scheduler_id, attributes)
            scheduler_id, attributes, indent, last_name = header[1], {}, None, None
            continue
        if not line.strip():
            continue
        if scheduler_id is None:
            raise ValueError(
                f"qstat output line {number} comes before any 'Job Id:' line: {line[:80]!r}"
            )
        attribute = _ATTRIBUTE_LINE.match(line)
        if attribute and indent in (None, attribute[1]):
            indent, last_name = attribute[1], attribute[2]
            attributes[last_name] = attribute[3] or ""
        elif last_name is None:
            raise ValueError(
                f"qstat output line {number} of job {scheduler_id} is not 'name = value': "
                f"{line[:80]!r}"
            )
        else:
            # Torque and PBS wrap at a fixed width, often inside a word, so nothing is inserted.
            attributes[last_name] += line.lstrip()

    if scheduler_id is not None:
        statuses[scheduler_id] = _text_job_status(scheduler_id, attributes)
    return statuses


def detect_and_parse(text: str) -> dict[str, JobStatus]:
    """Parse qstat output of any flavour, chosen by its first character: ``{`` JSON, ``<`` XML,
    anything else the text form. Whitespace-only text gives an empty dict."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return parse_pbs_json(text)
    if stripped.startswith("<"):
        return parse_torque_xml(text)
    return parse_torque_text(text)


def find(statuses: Mapping[str, JobStatus], scheduler_id: str) -> JobStatus | None:
    """Return the status of a job id as qsub printed it, or None when qstat did not list it.

    The id matches a listed id with the same number, the part before the first dot. When both
    name a server, one server name must also equal the other or be its dotted prefix. So
    ``1234`` matches ``1234.server``, ``1234.server`` matches ``1234.server.example.org``, and
    ``1234.a`` does not match ``1234.b``. Raises ValueError when the id matches several listed jobs.
    """
    exact = statuses.get(scheduler_id)
    if exact is not None:
        return exact
    number, _, server = scheduler_id.partition(".")
    matches = [
        status for listed_id, status in statuses.items() if _same_job(number, server, listed_id)
    ]
    if len(matches) > 1:
        listed = ", ".join(sorted(status.scheduler_id for status in matches))
        raise ValueError(
            f"job id {scheduler_id!r} matches several jobs in the qstat output: {listed}"
        )
    return matches[0] if matches else None


def unknown_job_ids(stderr: str) -> set[str]:
    """Return the ids that qstat's stderr reports as unknown or as finished without history.

    Both kinds are gone from qstat's view of live jobs, so the caller treats them as ended. The
    Slurm wrapper writes nothing for an unknown id, so for it the set is always empty and only
    the absence of the job from stdout shows that it ended.
    """
    ids = set(_UNKNOWN_JOB_ID.findall(stderr))
    ids.update(_FINISHED_JOB_ID.findall(stderr))
    return ids


def status_command(flavour: str, ids: Iterable[str]) -> str:
    """Build the shell command that queries the state of the given jobs in one qstat call.

    ``flavour`` is ``pbs``, ``torque`` or ``slurm-torque``. Each id is shell-quoted. Raises
    ValueError on an unknown flavour, no ids (qstat would list every job of the cluster), or an
    empty id or one starting with ``-``, which qstat would read as an option.
    """
    options = _STATUS_OPTIONS.get(flavour)
    if options is None:
        raise ValueError(
            f"unknown qstat flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}"
        )
    job_ids = list(ids)
    if not job_ids:
        raise ValueError("no job ids given: qstat without ids lists every job of the cluster")
    for job_id in job_ids:
        if not job_id or job_id.startswith("-"):
            raise ValueError(f"invalid job id {job_id!r}: it is empty or starts with '-'")
    return " ".join([options, *(shlex.quote(job_id) for job_id in job_ids)])


def _check_size(text: str) -> None:
    if len(text) > MAX_OUTPUT_CHARS:
        raise ValueError(
            f"qstat output has {len(text)} characters, over the limit of {MAX_OUTPUT_CHARS}; "
            "query fewer jobs per call"
        )


def _json_documents(text: str) -> Iterator[Any]:
    # strict=False also accepts raw control characters inside strings, in case a job's
    # environment in Variable_List contains them.
    decoder = json.JSONDecoder(strict=False)
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"qstat JSON output is invalid at line {error.lineno} column {error.colno}: "
                f"{error.msg}"
            ) from error
        yield document


def _flatten_json(prefix: str, value: object, attributes: dict[str, str]) -> None:
    # Nested objects become dotted names, as in the text form: Resource_List.walltime.
    if isinstance(value, dict):
        for name, member in value.items():
            _flatten_json(f"{prefix}.{name}" if prefix else str(name), member, attributes)
    elif value is not None:
        attributes[prefix] = str(value)


def _flatten_xml(prefix: str, element: ElementTree.Element, attributes: dict[str, str]) -> None:
    for child in element:
        name = f"{prefix}.{child.tag}" if prefix else child.tag
        if len(child):
            _flatten_xml(name, child, attributes)
        else:
            attributes[name] = (child.text or "").strip()


def _text_job_status(scheduler_id: str, attributes: Mapping[str, str]) -> JobStatus:
    codes = PBS_EXEC_CODES if "Exit_status" in attributes else TORQUE_EXEC_CODES
    return _job_status(scheduler_id, attributes, _TEXT_STATES, codes)


def _job_status(
    scheduler_id: str,
    attributes: Mapping[str, str],
    states: Mapping[str, SchedulerState],
    codes: Mapping[int, ExecCode],
) -> JobStatus:
    raw_state = attributes.get("job_state", "").strip()
    if not raw_state:
        raise ValueError(f"qstat output has no job_state for job {scheduler_id}")
    state = states.get(raw_state, UNKNOWN)
    comment = attributes.get("comment", "").strip() or None

    if state is not FINISHED:
        reason = comment
        if state is UNKNOWN and reason is None:
            reason = f"qstat reported job_state {raw_state!r}, which has no known meaning"
        return JobStatus(scheduler_id, state, None, reason, raw_state, None, comment)

    exit_status = _exit_status(scheduler_id, attributes)
    signal_number = None
    if exit_status is not None and exit_status > SIGNAL_EXIT_OFFSET:
        signal_number = exit_status - SIGNAL_EXIT_OFFSET
    reason = _end_reason(exit_status, signal_number, attributes, codes, comment)
    return JobStatus(scheduler_id, state, exit_status, reason, raw_state, signal_number, comment)


def _exit_status(scheduler_id: str, attributes: Mapping[str, str]) -> int | None:
    text = attributes.get("Exit_status", attributes.get("exit_status"))
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"qstat output has exit status {text!r} for job {scheduler_id}, not an integer"
        ) from None


def _end_reason(
    exit_status: int | None,
    signal_number: int | None,
    attributes: Mapping[str, str],
    codes: Mapping[int, ExecCode],
    comment: str | None,
) -> str | None:
    if exit_status is None:
        return "exit status not reported by qstat"
    if exit_status < 0:
        code = codes.get(exit_status)
        if code is None:
            return f"scheduler error {exit_status} (no known JOB_EXEC_* code)"
        return code.reason
    if signal_number is not None:
        # A walltime kill also arrives as SIGTERM, and Torque's comment on a deleted job
        # contains "deleted".
        if _walltime_used_up(attributes):
            return "walltime exceeded"
        if comment is not None and _DELETED_COMMENT.search(comment):
            return f"cancelled (killed by {_signal_name(signal_number)})"
        return f"killed by {_signal_name(signal_number)}"
    if exit_status == 0:
        return None
    if 128 < exit_status < SIGNAL_EXIT_OFFSET:
        # The job script's shell reports a command killed by signal N as 128 + N.
        return f"exit status {exit_status} (128 + {_signal_name(exit_status - 128)})"
    return f"exit status {exit_status}"


def _signal_name(number: int) -> str:
    # NOTE: names come from this machine's signal numbering, which matches Linux clusters.
    try:
        return f"signal {number}, {Signals(number).name}"
    except ValueError:
        return f"signal {number}"


def _walltime_used_up(attributes: Mapping[str, str]) -> bool:
    limit = _seconds(attributes.get("Resource_List.walltime"))
    used = _seconds(attributes.get("resources_used.walltime"))
    return limit is not None and used is not None and limit > 0 and used >= limit


def _seconds(duration: str | None) -> int | None:
    """Convert a PBS duration, ``[[hours:]minutes:]seconds``, to seconds; None if unreadable."""
    if duration is None:
        return None
    parts = duration.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        return None
    total = 0
    for part in parts:
        total = total * 60 + int(part)
    return total


def _same_job(number: str, server: str, listed_id: str) -> bool:
    listed_number, _, listed_server = listed_id.partition(".")
    if listed_number != number:
        return False
    if not server or not listed_server or server == listed_server:
        return True
    return listed_server.startswith(server + ".") or server.startswith(listed_server + ".")
