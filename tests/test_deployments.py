"""prefect.yaml: `prefect deploy --all` registers the scheduled deployments on a local Prefect server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _prefect(*args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    prefect = Path(sys.executable).with_name("prefect")
    return subprocess.run([str(prefect), *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_prefect_deploy_all_registers_the_scheduled_deployments(prefect_api):
    from prefect.client.orchestration import get_client

    created = _prefect("work-pool", "create", "radcap-local", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    async def read():
        async with get_client() as client:
            return {d.name: d for d in await client.read_deployments()}

    deployments = asyncio.run(read())
    assert {"inbox", "nightly", "demo", "pacs", "nightly-signed", "monitor"} <= set(deployments)
    assert deployments["monitor"].entrypoint == "radcap.flows.monitor:monitor_flow"
    assert deployments["nightly-signed"].parameters["fmt"] == "hl7"
    pacs = deployments["pacs"]
    assert pacs.schedules[0].schedule.interval.total_seconds() == 900
    assert pacs.entrypoint == "radcap.flows.caption:caption_pacs_flow" and pacs.parameters["sr"] is True
    assert {"pacs", "out"} <= set(pacs.parameter_openapi_schema["required"])
    inbox, nightly = deployments["inbox"], deployments["nightly"]
    assert inbox.work_pool_name == nightly.work_pool_name == "radcap-local"
    assert inbox.schedules[0].schedule.interval.total_seconds() == 300
    assert nightly.schedules[0].schedule.cron == "0 2 * * *"
    assert inbox.parameters["model"] == "models:/radcap-captioner@champion"
    assert {"inbox", "out"} <= set(inbox.parameter_openapi_schema["required"])
    assert nightly.parameters["fmt"] == "iu-xml" and nightly.entrypoint == "radcap.flows.nightly:nightly_retrain"
