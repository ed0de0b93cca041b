"""Parsing what qsub prints, and building its -v list."""

import pytest

from relay.errors import SubmitError
from relay.scheduler.pbs import parse_qsub_output, qsub_variables


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("1234\n", "1234"),
        ("1234.server\n", "1234.server"),
        ("  5678.pbs-01.cluster.example.org  \n", "5678.pbs-01.cluster.example.org"),
        ("qsub: notice: project quota at 91%\nlogin message\n42.head\n", "42.head"),
        ("17[].server\n", "17[].server"),
        ("6", "6"),
    ],
)
def test_parse_qsub_output_job_id(stdout: str, expected: str) -> None:
    assert parse_qsub_output(stdout) == expected


@pytest.mark.parametrize("stdout", ["", "\n", "qsub: submit error\n", "job 12 submitted\n"])
def test_parse_qsub_output_without_id_raises(stdout: str) -> None:
    with pytest.raises(SubmitError, match="qsub printed no job id"):
        parse_qsub_output(stdout)


def test_qsub_variables_joins_safe_values() -> None:
    variables = {"RELAY_URL": "http://127.0.0.1:8000", "RELAY_ARGS": "eyJhIjoxfQ"}
    assert qsub_variables(variables) == "RELAY_URL=http://127.0.0.1:8000,RELAY_ARGS=eyJhIjoxfQ"


@pytest.mark.parametrize("value", ["a,b", "a b", "x;y", "$(id)", "'q'", "", "a\nb"])
def test_qsub_variables_rejects_unsafe_value(value: str) -> None:
    with pytest.raises(SubmitError, match="RELAY_X"):
        qsub_variables({"RELAY_X": value})
