"""Logging set-up: a filter that keeps API keys out of uvicorn's request lines."""

from __future__ import annotations

import logging
import re

_ACCESS_TOKEN = re.compile(r"(access_token=)[^&\s\"']*")


class RedactAccessToken(logging.Filter):
    """Replace the value of `access_token` in a record's message and arguments with ***.

    Browsers pass their API key in the query string, which uvicorn puts in its access
    and websocket log lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _ACCESS_TOKEN.sub(r"\1***", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                _ACCESS_TOKEN.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def redact_access_tokens() -> None:
    """Install the filter on uvicorn's loggers; call it after uvicorn configured logging."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactAccessToken())
