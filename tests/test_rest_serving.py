"""The registered captioner behind MLflow's own REST server (`radcap serve`), as another hospital system
calls it: a study's real image bytes, base64 in JSON, in; its report out; a broken image is a 400 naming the row."""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_app_browser import free_port, running_server

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
NAME = "radcap-captioner-rest-test"


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def study_request(rows: list[tuple[str, str, bytes]], **params) -> dict:
    body = {
        "dataframe_split": {
            "columns": ["study_id", "view", "image_base64"],
            "data": [[s, v, base64.b64encode(data).decode()] for s, v, data in rows],
        }
    }
    return {**body, "params": params} if params else body


@pytest.fixture(scope="module")
def endpoint(registered_parrot: str, tmp_path_factory):
    """`radcap serve` as a user starts it (no PATH set up: the command finds its own server)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    argv = [sys.executable, "-m", "radcap.cli", "serve", "--model", registered_parrot, "--port", str(port)]
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # as a service manager would: this environment's bin/ not on it
    with running_server(argv, f"http://127.0.0.1:{port}/ping", log, 240, env=env):
        yield f"http://127.0.0.1:{port}/invocations"


def test_a_two_view_study_posted_as_base64_gets_its_report(endpoint, shared_data: Path):
    frontal, lateral, other = sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:3]
    status, answer = post(
        endpoint,
        study_request(
            [
                ("s1", "frontal", frontal.read_bytes()),
                ("s1", "lateral", lateral.read_bytes()),
                ("s2", "frontal", other.read_bytes()),
            ]
        ),
    )
    assert status == 200, answer
    rows = answer["predictions"]
    assert [r["study_id"] for r in rows] == ["s1", "s2"]
    assert all(r["caption"] == "left pleural effusion." for r in rows)
    assert all("in_domain" in r and "ood_score" in r for r in rows)  # null here: the test model has no guard
    status, greedy = post(endpoint, study_request([("s1", "frontal", frontal.read_bytes())], beam_width=1))
    assert status == 200 and greedy["predictions"][0]["caption"] == "left pleural effusion."


@pytest.mark.parametrize("case", ["truncated", "not base64"])
def test_a_broken_image_is_a_400_naming_the_row(endpoint, shared_data: Path, case):
    xray = sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[0].read_bytes()
    body = study_request([("s1", "frontal", xray), ("s1", "lateral", xray[:200])])
    if case == "not base64":
        body["dataframe_split"]["data"][1][2] = "%%% not base64 %%%"
    status, answer = post(endpoint, body)
    assert status == 400, answer
    message = answer.get("message", "")
    assert "image_base64 row 1" in message, answer
    assert ("not valid base64" if case == "not base64" else "cannot decode") in message, answer
    assert "Traceback" not in json.dumps(answer)
