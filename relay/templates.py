"""Job templates: discovery, argument validation and job script composition.

A template is `NAME.pbs` (a PBS script) next to `NAME.json` (a JSON Schema of its
arguments). The job script is the template with the job-side helper put in after the
template's leading `#PBS` block, because a scheduler reads directives only before the
first command.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from relay.errors import ConfigError, TemplateError

logger = logging.getLogger(__name__)

TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
HELPER_NAME = "relay.sh"
NO_ARGUMENTS_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": False}


def builtin_scripts_dir() -> Path:
    """Return the folder of built-in templates, in a source checkout or an installed wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "pbs_scripts", package / "pbs_scripts"):
        if (candidate / HELPER_NAME).is_file():
            return candidate
    raise ConfigError(f"built-in templates not found next to {package}")


WALLTIME = re.compile(r"^#PBS\s.*\bwalltime=(?:(\d+):)?(?:(\d+):)?(\d+)\b", re.MULTILINE)
DEFAULT_WALLTIME_SECONDS = 86_400


@dataclass(frozen=True)
class Template:
    name: str
    path: Path
    schema: dict[str, Any]

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def walltime_seconds(self) -> int:
        """Return the walltime of the template's `#PBS -l walltime=` line, else one day."""
        match = WALLTIME.search(self.text)
        if match is None:
            return DEFAULT_WALLTIME_SECONDS
        hours, minutes, seconds = (int(part or 0) for part in match.groups())
        if match.group(2) is None and match.group(1) is not None:
            # Two fields, MM:SS.
            hours, minutes = 0, hours
        return hours * 3600 + minutes * 60 + seconds


class TemplateRegistry:
    """The templates a relay may run: built-in ones, then the user's folders in order."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self.helper = (builtin_scripts_dir() / HELPER_NAME).read_text(encoding="utf-8")
        self.templates: dict[str, Template] = {}
        for folder in folders:
            if not folder.is_dir():
                raise ConfigError(f"scripts folder {folder} does not exist or is not a folder")
            for path in sorted(folder.glob("*.pbs")):
                template = _load_template(path)
                if template.name in self.templates:
                    logger.info(
                        "template %s from %s replaces %s",
                        template.name,
                        path,
                        self.templates[template.name].path,
                    )
                self.templates[template.name] = template
        logger.info("templates loaded: %s", ", ".join(sorted(self.templates)) or "none")

    def get(self, name: object) -> Template:
        if not isinstance(name, str) or not TEMPLATE_NAME.fullmatch(name):
            raise TemplateError(f"invalid template name {name!r}: expected letters, digits, - or _")
        template = self.templates.get(name)
        if template is None:
            raise TemplateError(
                f"unknown template {name!r}; known: {', '.join(sorted(self.templates))}"
            )
        return template

    def validate_args(self, template: Template, args: object) -> dict[str, Any]:
        """Check `args` against the template's schema and return them with defaults filled in."""
        if not isinstance(args, dict):
            raise TemplateError(f"args must be a JSON object, got {type(args).__name__}")
        validator = Draft202012Validator(template.schema)
        errors = sorted(validator.iter_errors(args), key=lambda error: list(error.path))
        if errors:
            error = errors[0]
            where = ".".join(str(part) for part in error.path)
            prefix = f"invalid argument {where!r}" if where else "invalid args"
            raise TemplateError(f"{prefix} for {template.name}: {error.message}")
        return _with_defaults(template.schema, args)

    def compose(self, template: Template, token: str, args: dict[str, Any]) -> str:
        return compose_script(template.text, self.helper, token, encode_args(args))


def _load_template(path: Path) -> Template:
    name = path.stem
    if not TEMPLATE_NAME.fullmatch(name):
        raise ConfigError(f"template file {path} has an invalid name")
    schema_path = path.with_suffix(".json")
    schema = NO_ARGUMENTS_SCHEMA
    if schema_path.exists():
        try:
            schema = json.loads(schema_path.read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(schema)
        except (ValueError, SchemaError) as error:
            raise ConfigError(f"invalid argument schema {schema_path}: {error}") from error
    return Template(name=name, path=path, schema=schema)


def _with_defaults(schema: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    filled = dict(args)
    for name, prop in schema.get("properties", {}).items():
        if name not in filled and isinstance(prop, dict) and "default" in prop:
            filled[name] = prop["default"]
    return filled


def compose_script(template: str, helper: str, token: str, encoded_args: str) -> str:
    """Return the job script: shebang, the template's header, RELAY_TOKEN and RELAY_ARGS,
    the helper, then the body.

    Token and arguments are written into the script, which only its owner and the
    scheduler can read, rather than passed with `qsub -v`. At many sites `qstat -f` shows
    the -v list to other users, and Slurm's Torque wrapper puts it on sbatch's command
    line. Linux also limits one command-line or environment string to 128 KiB.
    """
    for name, value in (("job token", token), ("encoded arguments", encoded_args)):
        if not re.fullmatch(r"[A-Za-z0-9_-]*", value) or (name == "job token" and not value):
            raise ValueError(f"{name} must be base64url")
    lines = template.splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    header_end = 0
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        header_end = index + 1
    header, body = lines[:header_end], lines[header_end:]
    helper_lines = helper.splitlines(keepends=True)
    if helper_lines and helper_lines[0].startswith("#!"):
        helper_lines = helper_lines[1:]
    parts = [
        "#!/bin/bash\n",
        *header,
        # RELAY_ARGS is not exported here: the helper exports it only when it is small.
        f"\nexport RELAY_TOKEN={token}\nRELAY_ARGS={encoded_args}\n",
        "\n# ---- job-side helper (relay.sh) ----\n",
        *helper_lines,
    ]
    if parts[-1] and not parts[-1].endswith("\n"):
        parts.append("\n")
    parts += ["# ---- template body ----\n", *body]
    return "".join(parts)


def encode_args(args: dict[str, Any]) -> str:
    """Return RELAY_ARGS: the arguments as JSON, base64url without padding."""
    raw = json.dumps(args, ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
