"""The command line: help on every stage, exit codes 0/1/2, one-line errors for user mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from radcap.cli import app, main
from tests.conftest import run_cli

COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command: str, capsys):
    assert run([command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert run(["ingest", "--format", "nope", "--source", ".", "--out", "x"]) == 2
    assert run(["no-such-command"]) == 2


def test_missing_source_names_the_path_without_traceback(tmp_path: Path, capsys):
    missing = tmp_path / "nowhere"
    assert run(["ingest", "--format", "iu-xml", "--source", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err and "Traceback" not in err


@pytest.mark.slow
def test_bad_csv_columns_inside_the_flow_is_one_line(tmp_path: Path, prefect_api):
    bad = tmp_path / "reports.csv"
    bad.write_text("a,b\n1,2\n")
    result = run_cli("ingest", "--format", "iu-csv", "--source", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert "missing columns" in result.stderr and "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_exit_1_when_inputs_are_rejected_and_0_when_not(tmp_path: Path, prefect_api):
    from radcap.core.settings import SampleSettings
    from radcap.ingestion.phantoms import write_sample

    sample = tmp_path / "sample"
    write_sample(sample, SampleSettings(studies=4, image_size=32))
    args = ["ingest", "--format", "iu-xml", "--source", str(sample / "ecgen-radiology"), "--out", str(tmp_path / "o")]
    ok = run_cli(*args)
    assert ok.returncode == 0, ok.stderr
    assert "report_inputs" in ok.stdout
    (sample / "ecgen-radiology" / "99.xml").write_text("<broken")
    rejected = run_cli(*args)
    assert rejected.returncode == 1 and "1 inputs rejected" in rejected.stderr


@pytest.mark.slow
def test_a_user_error_inside_a_flow_is_one_line_and_debug_shows_the_rest(tmp_path, prefect_api):
    """Not three Prefect ERROR blocks: one line, exit 2. --debug shows the traceback and Prefect's failure logs."""
    from radcap.core.settings import get_settings
    from radcap.ingestion.phantoms import write_sample

    sample = write_sample(
        tmp_path / "sample", get_settings().sample.model_copy(update={"studies": 4, "image_size": 64})
    )
    data = tmp_path / "data"
    assert (
        run_cli(
            "ingest",
            "--format",
            "iu-xml",
            "--source",
            str(Path(sample["path"]) / "ecgen-radiology"),
            "--out",
            str(data),
        ).returncode
        == 0
    )
    done = run_cli("evaluate", "--data", str(data), "--model", "models:/no-such-model/1", "--split", "val")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: models:/no-such-model/1: Model Version (name=no-such-model, version=1) not found"
    ]
    debug = run_cli("--debug", "evaluate", "--data", str(data), "--model", "models:/no-such-model/1", "--split", "val")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "Finished in state Failed" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: models:/no-such-model/1")


@pytest.mark.slow
def test_a_kept_alive_server_spares_each_command_the_temporary_one(tmp_path):
    import json

    from radcap.core.settings import get_settings
    from radcap.ingestion.phantoms import write_sample

    env = {"PREFECT_API_URL": "", "RADCAP_WORKSPACE": str(tmp_path / "ws")}  # its own workspace and server
    sample = Path(
        write_sample(tmp_path / "sample", get_settings().sample.model_copy(update={"studies": 4, "image_size": 64}))[
            "path"
        ]
    )
    ingest = ("--verbose", "ingest", "--format", "iu-xml", "--source", str(sample / "ecgen-radiology"), "--out")
    alone = run_cli(*ingest, str(tmp_path / "a"), env=env)
    assert alone.returncode == 0 and "Starting temporary server" in alone.stderr
    started = run_cli("--json", "server", "start", env=env)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        state = json.loads(started.stdout.strip().splitlines()[-1])
        assert state["started"] is True and state["api_url"].startswith("http://127.0.0.1:")
        assert run_cli("server", "status", env=env).returncode == 0
        reused = run_cli(*ingest, str(tmp_path / "b"), env=env)
        assert reused.returncode == 0 and "Starting temporary server" not in reused.stderr
        assert (tmp_path / "b" / "ingest.json").exists()
    finally:
        stopped = run_cli("--json", "server", "stop", env=env)
    assert json.loads(stopped.stdout.strip().splitlines()[-1])["stopped"] is True
    assert run_cli("server", "status", env=env).returncode == 1
