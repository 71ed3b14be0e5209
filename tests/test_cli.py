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


def test_bad_csv_columns_inside_the_flow_is_one_line(tmp_path: Path, prefect_api):
    bad = tmp_path / "reports.csv"
    bad.write_text("a,b\n1,2\n")
    result = run_cli("ingest", "--format", "iu-csv", "--source", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    assert "missing columns" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_exit_1_when_inputs_are_rejected_and_0_when_not(tmp_path: Path, prefect_api):
    from radcap.phantoms import write_sample
    from radcap.settings import SampleSettings

    sample = tmp_path / "sample"
    write_sample(sample, SampleSettings(studies=4, image_size=32))
    args = ["ingest", "--format", "iu-xml", "--source", str(sample / "ecgen-radiology"), "--out", str(tmp_path / "o")]
    ok = run_cli(*args)
    assert ok.returncode == 0, ok.stderr
    assert "report_inputs" in ok.stdout
    (sample / "ecgen-radiology" / "99.xml").write_text("<broken")
    rejected = run_cli(*args)
    assert rejected.returncode == 1 and "1 inputs rejected" in rejected.stderr
