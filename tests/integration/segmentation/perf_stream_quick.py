"""A quick measurement, not a test (its name keeps it out of collection): StreamMembers of a
200k-member segment (400k profiles, every other one a VIP), read by a client in another
process, as campaigns' fan-out reads it. Prints members per second. Run:

    .venv/bin/python -m pytest -q -s tests/integration/segmentation/perf_stream_quick.py

engineer BENCH measures the same at a million contacts (bench/).
"""

from __future__ import annotations

import asyncio
import os
import sys

from tests.integration.conftest import RunningService, Workspace
from tests.integration.segmentation.queries_support import bulk_seed, connect

CLIENT = """
import sys, time, grpc
from nudge.segmentation.v1 import segmentation_pb2 as pb, segmentation_pb2_grpc as g
address, key = sys.argv[1], sys.argv[2]
stub = g.SegmentServiceStub(grpc.insecure_channel(address))
targets = {
    "vip": pb.SegmentTarget(segment_id="vip"),
    "3-clause rule": pb.SegmentTarget(
        rule='{"all": [{"field": "vip", "op": "eq", "value": true},'
        ' {"not": {"tag": "x"}}, {"field": "orders", "op": "lt", "value": 5}]}'
    ),
}
for name, target in targets.items():
    for batch in (1000, 5000):
        start, n = time.perf_counter(), 0
        request = pb.StreamMembersRequest(target=target, batch_size=batch)
        for m in stub.StreamMembers(request, metadata=(("authorization", "Bearer " + key),)):
            n += len(m.members)
        took = time.perf_counter() - start
        print(f"{name} batch={batch}: {n} members in {took:.2f}s = {n / took:,.0f}/s")
"""


async def test_stream_rate(segmentation_service: RunningService, workspace: Workspace) -> None:
    await bulk_seed(workspace.id, 400_000, vip_every=2)
    conn = await connect()
    try:
        await conn.execute("ANALYZE profiles")
    finally:
        await conn.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        segmentation_service.address,
        workspace.api_key,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    print("\n" + out.decode())
    assert proc.returncode == 0
    print("load average:", os.getloadavg())
