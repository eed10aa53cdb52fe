"""The `sam-engine labelstudio` sub-app: commands exist and report clearly without a server."""

import json

from typer.testing import CliRunner

from flows.labelstudio_cli import app


def test_commands_are_up_down_status_backend():
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert names == {"up", "down", "status", "backend"}


def test_status_and_down_without_a_server(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--home", str(tmp_path)])
    assert result.exit_code == 0 and json.loads(result.output)["running"] is False
    result = runner.invoke(app, ["down", "--home", str(tmp_path)])
    assert result.exit_code == 0 and "not running" in result.output
