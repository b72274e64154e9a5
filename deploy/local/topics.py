"""Create Nudge's Kafka topics before anything uses them.

Explicitly, on every broker: Tansu auto-creates a topic on first use with its own
partition count, and a production broker should not auto-create at all. The list is the
services' own, ``services.common.topics.TOPICS``. Docker compose's ``init`` runs this module
too, so it imports nothing of the embedded infrastructure (the ``local`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

from services.common.topics import TOPICS

_TOPIC_ALREADY_EXISTS = 36


def _ready(described: list[dict[str, object]], topics: dict[str, int]) -> bool:
    """Every topic known, with its partitions, each partition with a leader."""
    seen = {str(t["topic"]): t for t in described}
    for name, partitions in topics.items():
        topic = seen.get(name)
        if topic is None or topic["error_code"] != 0:
            return False
        parts = topic["partitions"]
        assert isinstance(parts, list)
        if len(parts) < partitions or any(p["leader"] < 0 for p in parts):
            return False
    return True


async def ensure_topics(
    bootstrap: str, topics: dict[str, int] | None = None, *, timeout: float = 60.0
) -> None:
    """Create the missing ``topics`` (name -> partitions, replication 1), then wait until
    the metadata shows them all with leaders. Idempotent. ``topics``: default
    :data:`services.common.topics.TOPICS`."""
    wanted = dict(TOPICS) if topics is None else topics
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(name, partitions, 1)
                for name, partitions in wanted.items()
                if name not in existing
            ]
            if missing:
                answer = await admin.create_topics(missing)
                for topic_error in answer.topic_errors:
                    name, code = topic_error[0], topic_error[1]
                    if code not in (0, _TOPIC_ALREADY_EXISTS):
                        raise for_code(code)(f"creating topic {name}")
            if _ready(await admin.describe_topics(list(wanted)), wanted):
                return
        except KafkaError as err:
            # A broker that just started may still answer "not controller" and the like.
            last = err
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics not ready on {bootstrap} after {timeout}s: {last!r}")
        await asyncio.sleep(0.2)
