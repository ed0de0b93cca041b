"""Template discovery, argument checks and job script composition."""

import base64
import json
from pathlib import Path

import pytest

from relay.errors import ConfigError, TemplateError
from relay.templates import TemplateRegistry, compose_script, encode_args

HELPER = "#!/bin/bash\n# helper\nrelay_log() { :; }\n"
TOKEN = "tok_en-123"
ARGS = "eyJhIjoxfQ"


def test_compose_puts_helper_after_pbs_header() -> None:
    template = "#!/bin/bash\n#PBS -N demo\n#PBS -l walltime=00:05:00\n\necho body\n"
    script = compose_script(template, HELPER, TOKEN, ARGS)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1:3] == ["#PBS -N demo", "#PBS -l walltime=00:05:00"]
    assert lines.index("relay_log() { :; }") < lines.index("echo body")
    assert script.count("#!/bin/bash") == 1


def test_compose_exports_token_before_helper() -> None:
    script = compose_script("#PBS -N demo\necho body\n", HELPER, TOKEN, ARGS)
    export_at = script.index(f"export RELAY_TOKEN={TOKEN}\nRELAY_ARGS={ARGS}\n")
    assert script.index("#PBS -N demo") < export_at < script.index("relay_log()")


@pytest.mark.parametrize("token", ["", "a b", "x;id", "$(id)", "a\nb"])
def test_compose_rejects_token_outside_base64url(token: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        compose_script("echo\n", HELPER, token, ARGS)


def test_compose_keeps_every_pbs_line_before_first_command() -> None:
    template = "#PBS -N a\n# a comment\n#PBS -l nodes=1\nset -e\n#PBS -q late\n"
    script = compose_script(template, HELPER, TOKEN, ARGS)
    helper_at = script.index("relay_log()")
    assert script.index("#PBS -l nodes=1") < helper_at
    # A directive after the first command is not a directive; it stays in the body.
    assert script.index("#PBS -q late") > helper_at
    assert script.index("set -e") > helper_at


def test_compose_template_without_header() -> None:
    script = compose_script("echo only\n", HELPER, TOKEN, ARGS)
    assert script.startswith("#!/bin/bash\n")
    assert script.rstrip().endswith("echo only")


def test_encode_args_is_unpadded_base64url_of_json() -> None:
    args = {"text": 'a,b "c" d=e \\ \n é ✓', "n": 3}
    encoded = encode_args(args)
    assert "=" not in encoded
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    assert json.loads(decoded) == args


@pytest.fixture
def registry(tmp_path: Path) -> TemplateRegistry:
    (tmp_path / "greet.pbs").write_text("#PBS -N greet\necho hi\n")
    (tmp_path / "greet.json").write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 5, "default": "bob"},
                    "n": {"type": "integer", "minimum": 1, "maximum": 3},
                },
                "additionalProperties": False,
            }
        )
    )
    (tmp_path / "bare.pbs").write_text("echo bare\n")
    return TemplateRegistry([tmp_path])


def test_registry_fills_defaults(registry: TemplateRegistry) -> None:
    template = registry.get("greet")
    assert registry.validate_args(template, {"n": 2}) == {"n": 2, "name": "bob"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"n": 9}, "'n'"),
        ({"name": "toolong"}, "'name'"),
        ({"other": 1}, "Additional properties"),
        ([1, 2], "JSON object"),
    ],
)
def test_registry_rejects_invalid_args(
    registry: TemplateRegistry, args: object, message: str
) -> None:
    template = registry.get("greet")
    with pytest.raises(TemplateError, match=message):
        registry.validate_args(template, args)


def test_template_without_schema_accepts_only_empty_args(registry: TemplateRegistry) -> None:
    template = registry.get("bare")
    assert registry.validate_args(template, {}) == {}
    with pytest.raises(TemplateError):
        registry.validate_args(template, {"x": 1})


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "..", "", "-x", "nope", 5, None])
def test_registry_rejects_bad_names(registry: TemplateRegistry, name: object) -> None:
    with pytest.raises(TemplateError):
        registry.get(name)


def test_registry_builtin_templates_present() -> None:
    registry = TemplateRegistry([])
    assert registry.helper.startswith("#!")


def test_registry_missing_folder_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TemplateRegistry([tmp_path / "missing"])
