"""Parsing batched qstat output of PBS, Torque and Slurm's Torque wrapper.

The fixtures in tests/data/qstat are real outputs, and SOURCES.md names the source of each.
"""

from pathlib import Path

import pytest

from relay.scheduler import qstat
from relay.scheduler.qstat import (
    FINISHED,
    HELD,
    PBS_EXEC_CODES,
    QUEUED,
    RUNNING,
    TORQUE_EXEC_CODES,
    UNKNOWN,
    JobStatus,
    detect_and_parse,
    find,
    parse_pbs_json,
    parse_torque_text,
    parse_torque_xml,
    status_command,
    unknown_job_ids,
)

DATA = Path(__file__).parent / "data" / "qstat"

POLARIS_QUEUED = "359322.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
POLARIS_HELD = "412020.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
POLARIS_RUNNING = "1147579.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"


def fixture_text(name: str) -> str:
    return (DATA / name).read_text()


def only_status(statuses: dict[str, JobStatus]) -> JobStatus:
    assert len(statuses) == 1
    return next(iter(statuses.values()))


# PBS JSON


def test_pbs_json_lists_every_job() -> None:
    statuses = parse_pbs_json(fixture_text("pbs_polaris_jobs.json"))
    assert set(statuses) == {POLARIS_QUEUED, POLARIS_HELD, POLARIS_RUNNING}


def test_pbs_json_running_job() -> None:
    status = parse_pbs_json(fixture_text("pbs_polaris_jobs.json"))[POLARIS_RUNNING]
    assert status.scheduler_id == POLARIS_RUNNING
    assert status.state == RUNNING
    assert status.raw_state == "R"
    assert status.exit_status is None
    assert status.reason is not None
    assert status.reason.startswith("Job run at Thu Nov 09 at 19:05")


def test_pbs_json_queued_job_reason_is_comment() -> None:
    status = parse_pbs_json(fixture_text("pbs_polaris_jobs.json"))[POLARIS_QUEUED]
    assert status.state == QUEUED
    assert status.raw_state == "Q"
    assert status.exit_status is None
    assert status.reason == "Not Running: Job is requesting an exclusive node and node is in use"


def test_pbs_json_held_job_hides_earlier_exit_status() -> None:
    # The held job carries Exit_status -3 from its failed starts, but it has not ended.
    status = parse_pbs_json(fixture_text("pbs_polaris_jobs.json"))[POLARIS_HELD]
    assert status.state == HELD
    assert status.exit_status is None
    assert status.signal is None
    assert status.reason == "job held, too many failed attempts to run"


def test_pbs_json_finished_exit_zero() -> None:
    status = only_status(parse_pbs_json(fixture_text("pbs_psij_finished.json")))
    assert status.scheduler_id == "2154.edtb-01.mcp.alcf.anl.gov"
    assert status.state == FINISHED
    assert status.raw_state == "F"
    assert status.exit_status == 0
    assert status.reason is None
    assert status.signal is None
    assert status.comment == "Job run at Mon Jan 24 at 08:39 on (edtb-01[0]:ncpus=1) and finished"


def test_pbs_json_without_jobs_member_is_empty() -> None:
    assert parse_pbs_json(fixture_text("pbs_parsl_no_jobs.json")) == {}


def test_pbs_json_whitespace_is_empty() -> None:
    assert parse_pbs_json(" \n") == {}


def test_pbs_json_several_documents_are_merged() -> None:
    text = fixture_text("pbs_psij_finished.json") + fixture_text("pbs_polaris_jobs.json")
    statuses = parse_pbs_json(text)
    assert "2154.edtb-01.mcp.alcf.anl.gov" in statuses
    assert POLARIS_RUNNING in statuses


def test_pbs_json_control_character_in_string_is_accepted() -> None:
    # Strict JSON rejects a raw tab inside a string, which a job's environment could contain.
    text = fixture_text("pbs_polaris_jobs.json").replace('"PBS_O_SYSTEM":"Linux"', '"X":"a\tb"', 1)
    assert POLARIS_QUEUED in parse_pbs_json(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"Jobs": {"1.server": {"job_state": "R"}', "qstat JSON output is invalid at line 1"),
        ("[1, 2]", "is a list, not an object"),
        ('{"Jobs": []}', "'Jobs' member that is not an object"),
        ('{"Jobs": {"1.server": "R"}}', "job 1.server that is not an object"),
        ('{"Jobs": {"1.server": {"queue": "batch"}}}', "no job_state for job 1.server"),
        (
            '{"Jobs": {"1.server": {"job_state": "F", "Exit_status": "x"}}}',
            "exit status 'x' for job 1.server, not an integer",
        ),
    ],
)
def test_pbs_json_malformed_raises(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pbs_json(text)


# Exit status tables and decoding


def test_pbs_exec_codes_walltime_is_minus_29() -> None:
    assert PBS_EXEC_CODES[-29].name == "JOB_EXEC_KILL_WALLTIME"
    assert PBS_EXEC_CODES[-29].reason == "walltime exceeded"


def test_torque_exec_codes_walltime_is_minus_11() -> None:
    assert TORQUE_EXEC_CODES[-11].name == "JOB_EXEC_OVERLIMIT_WT"
    assert TORQUE_EXEC_CODES[-11].reason == "walltime exceeded"


def test_pbs_exec_codes_minus_11_is_rerun() -> None:
    assert PBS_EXEC_CODES[-11].name == "JOB_EXEC_RERUN"


@pytest.mark.parametrize(
    ("exit_status", "reason"),
    [
        (-29, "walltime exceeded"),
        (-27, "memory limit exceeded"),
        (-20, "node failure: connection to the mother superior node failed"),
        (-99, "scheduler error -99 (no known JOB_EXEC_* code)"),
        (1, "exit status 1"),
        (137, "exit status 137 (128 + signal 9, SIGKILL)"),
        (265, "killed by signal 9, SIGKILL"),
    ],
)
def test_pbs_json_finished_exit_status_reason(exit_status: int, reason: str) -> None:
    text = f'{{"Jobs": {{"7.server": {{"job_state": "F", "Exit_status": {exit_status}}}}}}}'
    status = parse_pbs_json(text)["7.server"]
    assert status.exit_status == exit_status
    assert status.reason == reason


# Torque text


def test_torque_text_queued_job() -> None:
    status = only_status(parse_torque_text(fixture_text("torque_barnacle_queued.txt")))
    assert status.scheduler_id == "515916.barnacle.ucsd.edu"
    assert status.state == QUEUED
    assert status.raw_state == "Q"
    assert status.exit_status is None


def test_torque_text_running_job() -> None:
    status = only_status(parse_torque_text(fixture_text("torque_barnacle_running.txt")))
    assert status.scheduler_id == "522059.barnacle.ucsd.edu"
    assert status.state == RUNNING
    assert status.raw_state == "R"
    assert status.exit_status is None
    assert status.reason is None


def test_torque_text_finished_exit_zero() -> None:
    status = only_status(parse_torque_text(fixture_text("torque_barnacle_success.txt")))
    assert status.state == FINISHED
    assert status.raw_state == "C"
    assert status.exit_status == 0
    assert status.reason is None


def test_torque_text_walltime_kill() -> None:
    status = only_status(parse_torque_text(fixture_text("torque_barnacle_walltime.txt")))
    assert status.scheduler_id == "522083.barnacle.ucsd.edu"
    assert status.state == FINISHED
    assert status.exit_status == -11
    assert status.signal is None
    assert status.reason == "walltime exceeded"


def test_torque_text_killed_by_signal() -> None:
    status = only_status(parse_torque_text(fixture_text("torque_mavis_deleted.txt")))
    assert status.scheduler_id == "48[1].torque01.bcgsc.ca"
    assert status.state == FINISHED
    assert status.exit_status == 271
    assert status.signal == 15
    assert status.reason == "cancelled (killed by signal 15, SIGTERM)"


def test_torque_text_continuation_lines_join_value() -> None:
    # The comment wraps inside the word "array" onto a line indented by eight spaces.
    status = only_status(parse_torque_text(fixture_text("torque_mavis_deleted.txt")))
    assert status.comment == (
        "Job 48[].torque01.bcgsc.ca deleted because its dependency of array "
        "43[].torque01.bcgsc.ca can never be satisfied"
    )


def test_torque_text_blank_line_inside_job_is_skipped() -> None:
    status = only_status(parse_torque_text(fixture_text("torque_mavis_complete.txt")))
    assert status.scheduler_id == "9.torque01.bcgsc.ca"
    assert status.exit_status == 0
    assert status.comment == "Job started on Tue May 29 at 09:37"


def test_torque_text_sigterm_at_walltime_limit() -> None:
    # The walltime fixture as a MoM that reports the kill as SIGTERM (256 + 15) would print it.
    text = fixture_text("torque_barnacle_walltime.txt").replace(
        "exit_status = -11", "exit_status = 271"
    )
    status = only_status(parse_torque_text(text))
    assert status.signal == 15
    assert status.reason == "walltime exceeded"


def test_torque_text_several_jobs() -> None:
    text = fixture_text("torque_barnacle_queued.txt") + fixture_text("torque_mavis_deleted.txt")
    statuses = parse_torque_text(text)
    assert set(statuses) == {"515916.barnacle.ucsd.edu", "48[1].torque01.bcgsc.ca"}
    assert statuses["515916.barnacle.ucsd.edu"].state == QUEUED
    assert statuses["48[1].torque01.bcgsc.ca"].state == FINISHED


def test_torque_text_pbs_spelling_uses_pbs_table() -> None:
    # PBS spells Exit_status with a capital E, and -11 is a rerun there, not a walltime kill.
    text = "Job Id: 5.server\n    job_state = F\n    Exit_status = -11\n"
    status = parse_torque_text(text)["5.server"]
    assert status.reason == "job rerun"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("garbage\n", "line 1 comes before any 'Job Id:' line"),
        ("Job Id: 5.server\n\tcontinued value\n", "line 2 of job 5.server is not 'name = value'"),
        ("Job Id: 5.server\n    queue = batch\n", "no job_state for job 5.server"),
    ],
)
def test_torque_text_malformed_raises(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_torque_text(text)


# Slurm's Torque wrapper


def test_slurm_wrapper_running_job() -> None:
    status = parse_torque_text(fixture_text("slurm_torque_wrapper.txt"))["6"]
    assert status.state == RUNNING
    assert status.raw_state == "R"
    assert status.exit_status is None


def test_slurm_wrapper_queued_job() -> None:
    status = parse_torque_text(fixture_text("slurm_torque_wrapper.txt"))["7"]
    assert status.state == QUEUED
    assert status.raw_state == "Q"


def test_slurm_wrapper_ended_job_has_no_exit_status() -> None:
    status = parse_torque_text(fixture_text("slurm_torque_wrapper.txt"))["5"]
    assert status.state == FINISHED
    assert status.raw_state == "C"
    assert status.exit_status is None
    assert status.reason == "exit status not reported by qstat"


def test_slurm_wrapper_unknown_state_letter() -> None:
    # The wrapper's stateCode() prints U for a state it cannot map.
    text = fixture_text("slurm_torque_wrapper.txt").replace("job_state = Q", "job_state = U")
    status = parse_torque_text(text)["7"]
    assert status.state == UNKNOWN
    assert status.reason == "qstat reported job_state 'U', which has no known meaning"


# Torque XML


def test_torque_xml_running_job_hides_earlier_exit_status() -> None:
    statuses = parse_torque_xml(fixture_text("torque_fyrd_queue.xml"))
    status = statuses["665199.superserver.stanford.edu"]
    assert status.state == RUNNING
    assert status.raw_state == "R"
    assert status.exit_status is None


def test_torque_xml_queued_job() -> None:
    status = parse_torque_xml(fixture_text("torque_fyrd_queue.xml"))[
        "667999.superserver.stanford.edu"
    ]
    assert status.state == QUEUED
    assert status.raw_state == "Q"


def test_torque_xml_finished_exit_zero() -> None:
    status = parse_torque_xml(fixture_text("torque_fyrd_queue.xml"))[
        "673174.superserver.stanford.edu"
    ]
    assert status.state == FINISHED
    assert status.exit_status == 0
    assert status.reason is None


def test_torque_xml_array_parent_has_no_exit_status() -> None:
    status = parse_torque_xml(fixture_text("torque_fyrd_queue.xml"))[
        "673175[].superserver.stanford.edu"
    ]
    assert status.state == FINISHED
    assert status.exit_status is None


def test_torque_xml_finished_non_zero() -> None:
    status = only_status(parse_torque_xml(fixture_text("torque_bpipe_exit1.xml")))
    assert status.scheduler_id == "1000"
    assert status.state == FINISHED
    assert status.exit_status == 1
    assert status.signal is None
    assert status.reason == "exit status 1"


def test_torque_xml_multiline_element_is_parsed() -> None:
    status = only_status(parse_torque_xml(fixture_text("torque_batcheuphoria_finished.xml")))
    assert status.scheduler_id == "4564045.pbsserver"
    assert status.exit_status == 0


def test_torque_xml_several_documents_are_merged() -> None:
    text = fixture_text("torque_bpipe_exit1.xml") + fixture_text(
        "torque_batcheuphoria_finished.xml"
    )
    assert set(parse_torque_xml(text)) == {"1000", "4564045.pbsserver"}


def test_torque_xml_declaration_is_accepted() -> None:
    text = '<?xml version="1.0"?>\n' + fixture_text("torque_bpipe_exit1.xml")
    assert set(parse_torque_xml(text)) == {"1000"}


def test_torque_xml_control_character_is_dropped() -> None:
    text = fixture_text("torque_fyrd_queue.xml").replace("PBS_O_SHELL=/bin/zsh", "A=\x1b[0m", 1)
    assert "673174.superserver.stanford.edu" in parse_torque_xml(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<Data><Job><Job_Id>1</Job_Id>", "qstat XML output is invalid"),
        ("<Other/>", "has <Other> where <Data> was expected"),
        ("<Data><Queue/></Data>", "has <Queue> where <Job> was expected"),
        ("<Data><Job><job_state>R</job_state></Job></Data>", "a <Job> without Job_Id"),
        ("<Data><Job><Job_Id>1</Job_Id></Job></Data>", "no job_state for job 1"),
        ("garbage<Data></Data>", "text outside <Data>"),
        (
            '<!DOCTYPE d [<!ENTITY e "x">]><Data><Job><Job_Id>&e;</Job_Id></Job></Data>',
            "contains a DTD",
        ),
    ],
)
def test_torque_xml_malformed_raises(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_torque_xml(text)


# Format detection and input size


@pytest.mark.parametrize(
    ("name", "scheduler_id"),
    [
        ("pbs_polaris_jobs.json", POLARIS_RUNNING),
        ("torque_bpipe_exit1.xml", "1000"),
        ("torque_barnacle_running.txt", "522059.barnacle.ucsd.edu"),
        ("slurm_torque_wrapper.txt", "6"),
    ],
)
def test_detect_and_parse_picks_parser(name: str, scheduler_id: str) -> None:
    assert scheduler_id in detect_and_parse(fixture_text(name))


def test_detect_and_parse_empty_output_is_empty() -> None:
    assert detect_and_parse("") == {}


def test_detect_and_parse_garbage_raises() -> None:
    with pytest.raises(ValueError, match="comes before any 'Job Id:' line"):
        detect_and_parse("qstat: cannot connect to server pbs01\n")


def test_parsers_reject_oversized_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qstat, "MAX_OUTPUT_CHARS", 100)
    text = fixture_text("torque_barnacle_running.txt")
    with pytest.raises(ValueError, match="over the limit of 100"):
        parse_torque_text(text)


# Unknown ids on stderr


def test_unknown_job_ids_pbs_messages() -> None:
    ids = unknown_job_ids(fixture_text("pbs_qtoolkit_unknown.stderr"))
    assert ids == {"10000.c2cf5fbe1102", "1008.c2cf5fbe1102"}


def test_unknown_job_ids_pbs_finished_without_history() -> None:
    ids = unknown_job_ids(fixture_text("pbs_parsl_finished.stderr"))
    assert ids == {"5487654.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"}


def test_unknown_job_ids_torque_6_messages() -> None:
    ids = unknown_job_ids(fixture_text("torque_bpipe_unknown.stderr"))
    assert ids == {"3685292.mgt.meerkat.mcri.edu.au", "12345.mgt.meerkat.mcri.edu.au"}


def test_unknown_job_ids_ignores_other_messages() -> None:
    assert unknown_job_ids("qstat: cannot connect to server pbs01 (errno=111)\n") == set()


def test_unknown_job_ids_empty_stderr() -> None:
    assert unknown_job_ids("") == set()


# Id matching


def test_find_exact_id() -> None:
    statuses = parse_pbs_json(fixture_text("pbs_polaris_jobs.json"))
    status = find(statuses, POLARIS_RUNNING)
    assert status is not None
    assert status.scheduler_id == POLARIS_RUNNING


def test_find_number_without_server() -> None:
    statuses = parse_pbs_json(fixture_text("pbs_polaris_jobs.json"))
    status = find(statuses, "1147579")
    assert status is not None
    assert status.scheduler_id == POLARIS_RUNNING


def test_find_short_server_matches_full_name() -> None:
    statuses = parse_torque_text(fixture_text("torque_barnacle_running.txt"))
    status = find(statuses, "522059.barnacle")
    assert status is not None
    assert status.scheduler_id == "522059.barnacle.ucsd.edu"


def test_find_id_with_server_matches_bare_number() -> None:
    statuses = parse_torque_text(fixture_text("slurm_torque_wrapper.txt"))
    status = find(statuses, "6.login")
    assert status is not None
    assert status.scheduler_id == "6"


def test_find_other_server_is_none() -> None:
    statuses = parse_torque_text(fixture_text("torque_barnacle_running.txt"))
    assert find(statuses, "522059.otherserver") is None


def test_find_other_number_is_none() -> None:
    statuses = parse_pbs_json(fixture_text("pbs_polaris_jobs.json"))
    assert find(statuses, "1147578") is None


def test_find_array_parent_needs_brackets() -> None:
    statuses = parse_torque_xml(fixture_text("torque_fyrd_queue.xml"))
    assert find(statuses, "673175") is None
    status = find(statuses, "673175[]")
    assert status is not None
    assert status.scheduler_id == "673175[].superserver.stanford.edu"


def test_find_ambiguous_number_raises() -> None:
    two_servers = {
        "8.alpha": JobStatus("8.alpha", RUNNING, None, None, "R"),
        "8.beta": JobStatus("8.beta", QUEUED, None, None, "Q"),
    }
    with pytest.raises(ValueError, match="matches several jobs"):
        find(two_servers, "8")


# Command building


def test_status_command_pbs() -> None:
    command = status_command("pbs", ["1234.server", "1235.server"])
    assert command == "qstat -x -f -F json 1234.server 1235.server"


def test_status_command_torque() -> None:
    assert status_command("torque", ["1234.server"]) == "qstat -f -x 1234.server"


def test_status_command_slurm_torque() -> None:
    assert status_command("slurm-torque", ["6", "7"]) == "qstat -f 6 7"


def test_status_command_quotes_ids() -> None:
    command = status_command("torque", ["17[].server", "1; rm -rf ~"])
    assert command == "qstat -f -x '17[].server' '1; rm -rf ~'"


@pytest.mark.parametrize(
    ("flavour", "ids", "message"),
    [
        ("sge", ["1"], "unknown qstat flavour 'sge'"),
        ("pbs", [], "no job ids given"),
        ("pbs", [""], "invalid job id ''"),
        ("pbs", ["-u"], "invalid job id '-u'"),
    ],
)
def test_status_command_invalid_input_raises(flavour: str, ids: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        status_command(flavour, ids)
