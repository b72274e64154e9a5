"""The campaign fan-out's writer of ``delivery.requests.v1``: one ``DeliveryRequested`` per
mailed recipient, in the common envelope, keyed by contact id.

Speed is the point (issue 15 asks for 50,000 messages/s on two cores), so a record is not
built as a protobuf object per recipient. Everything that is the same for every recipient of
a campaign's variant (workspace, occurred_at, type, kind, purpose, content, sender) is
serialised once into a :class:`RequestTemplate`; a record is then the per-recipient fields
(event id, message id, contact id) as bytes followed by the constant bytes. Protobuf
serialises fields in field-number order and the per-recipient fields have the lowest
numbers, so the result is byte for byte what ``new_envelope(...).SerializeToString()`` gives
(tests/unit/campaigns/test_fanout_records.py holds them equal).

Everything in a record is deterministic (the ids are uuid5 of campaign and contact,
``occurred_at`` is the fan-out's fixed evaluation time), so a replayed batch is identical and
delivery, which claims a message id once, mails nobody twice.

Records are written in record batches per partition (the producer's own murmur2
partitioner, so every producer of a contact's key agrees), all partitions in flight at once,
and :meth:`DeliveryRequestWriter.write` returns once the broker acked every one of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2 as _aiokafka_murmur2
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.campaigns.domain.content import MessageTemplates
from services.common.events import NAMESPACE
from services.common.kafka import PRODUCER_BROKEN
from services.common.topics import DELIVERY_REQUESTS
from services.common.tracing import inject_headers

log = logging.getLogger(__name__)

_TYPE = delivery_pb2.DeliveryRequested.DESCRIPTOR.full_name
# Envelope field 1 (event_id) and DeliveryRequested fields 1 and 2 (message_id,
# contact_id): length-delimited strings of 36 characters (a UUID's text form).
_UUID_FIELD_1 = bytes([(1 << 3) | 2, 36])
_UUID_FIELD_2 = bytes([(2 << 3) | 2, 36])
# uuid5 is SHA-1 of the namespace and the name: the hash state after the namespace and the
# name's constant prefix, copied for each id.
_CAMPAIGN = hashlib.sha1(NAMESPACE.bytes + b"campaign/")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_PAYLOAD_TAG = _varint((40 << 3) | 2)  # envelope field 40, delivery_requested


def _uuid5_text(prefix: hashlib._Hash, name: bytes) -> str:
    """``str(uuid.uuid5(NAMESPACE, prefix_text + name))`` with the namespace and the prefix
    hashed once (uuid.uuid5 re-hashes both every call) and no UUID object in between: the
    version (5) and the RFC 4122 variant bits set on the digest, formatted 8-4-4-4-12."""
    h = prefix.copy()
    h.update(name)
    b = bytearray(h.digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50
    b[8] = (b[8] & 0x3F) | 0x80
    x = b.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_M = 0x5BD1E995
_SEED = 0x9747B28C


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``, aiokafka's ``murmur2``) of each
    of ``keys``, all keys at once: aiokafka's byte-at-a-time version cost a fifth of the
    fan-out's time, a word-at-a-time loop still a tenth.

    Keys of one length, a multiple of 4 (contact ids, 36 bytes), are hashed side by side in
    one Python integer of 64-bit lanes, one lane per key: lane i of ``k`` holds word j of key
    i, so each step of the hash (multiply by ``_M`` modulo 2**32, xor-shift) is a handful of
    integer operations on the whole batch, done in C. A product of two 32-bit values fits its
    64-bit lane, and masking to the low 32 bits of each lane after every step is the modulo;
    a right shift's bits from the next lane land in the masked-off half. Other keys go one
    by one through aiokafka's. tests/unit/campaigns/test_fanout_records.py holds the result
    equal to aiokafka's."""
    n = len(keys)
    length = len(keys[0]) if keys else 0
    if not n or length & 3 or any(len(key) != length for key in keys):
        return [int(_aiokafka_murmur2(key)) for key in keys]
    packed = b"".join(keys)
    lanes = bytearray(8 * n)
    mask = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * n, "little")
    h = (_SEED ^ length) * int.from_bytes(b"\1\0\0\0\0\0\0\0" * n, "little")
    for word in range(0, length, 4):
        for byte in range(4):  # word j of every key, little-endian, into the lanes
            lanes[byte::8] = packed[word + byte :: length]
        k = (int.from_bytes(lanes, "little") * _M) & mask
        k ^= (k >> 24) & mask
        k = (k * _M) & mask
        h = ((h * _M) & mask) ^ k
    h ^= (h >> 13) & mask
    h = (h * _M) & mask
    h ^= (h >> 15) & mask
    return list(struct.unpack(f"<{2 * n}I", h.to_bytes(8 * n, "little"))[::2])


def partitions_of(keys: Sequence[bytes], partitions: Sequence[int]) -> list[int]:
    """The partition aiokafka's DefaultPartitioner gives each of ``keys`` (``partitions``
    sorted)."""
    count = len(partitions)
    return [partitions[(h & 0x7FFFFFFF) % count] for h in murmur2_many(keys)]


def campaign_message_id(campaign_id: str, contact_id: str) -> str:
    """The same as services/campaigns/audience.py ``message_id()`` (a unit test holds them
    equal), computed with the namespace's hash state reused: the fan-out makes one per
    recipient."""
    return _uuid5_text(_CAMPAIGN, f"{campaign_id}/{contact_id}".encode())


@dataclass(frozen=True)
class RequestTemplate:
    """The constant bytes of one campaign variant's records."""

    envelope_rest: bytes  # envelope fields 2-4 (workspace_id, occurred_at, type)
    payload_rest: bytes  # DeliveryRequested fields 3-11 (kind ... reply_to)

    def encode(self, message_id: str, contact_id: str) -> bytes:
        """The serialised envelope of one recipient's DeliveryRequested. Its event id is the
        message id, as for delivery's own transactional requests and campaigns' test sends:
        one request per message, and a third SHA-1 per recipient saved."""
        mid = message_id.encode()
        payload = (_UUID_FIELD_1 + mid + _UUID_FIELD_2 + contact_id.encode()) + self.payload_rest
        return b"".join(
            (
                _UUID_FIELD_1,
                mid,
                self.envelope_rest,
                _PAYLOAD_TAG,
                _varint(len(payload)),
                payload,
            )
        )


def request_template(
    *,
    workspace_id: str,
    campaign_id: str,
    purpose: contacts_pb2.ConsentPurpose.ValueType,
    content: MessageTemplates,
    from_name: str,
    reply_to: str,
    occurred_at: datetime,
) -> RequestTemplate:
    payload = delivery_pb2.DeliveryRequested(
        kind=delivery_pb2.MESSAGE_KIND_CAMPAIGN,
        purpose=purpose,
        content=delivery_pb2.MessageContent(
            subject=content.subject, body_text=content.body_text, body_html=content.body_html
        ),
        campaign_id=campaign_id,
        from_name=from_name,
        reply_to=reply_to,
    )
    envelope = Envelope(workspace_id=workspace_id, type=_TYPE)
    envelope.occurred_at.FromDatetime(occurred_at)
    return RequestTemplate(
        envelope_rest=envelope.SerializeToString(deterministic=True),
        payload_rest=payload.SerializeToString(deterministic=True),
    )


class RecordTooLarge(ValueError):
    """One record does not fit in a record batch: the campaign's content is too large."""


class DeliveryRequestWriter:
    """Writes (key, value) records to delivery.requests.v1 and waits for every ack."""

    # One record batch per partition carries many records: a campaign's records are alike
    # and a few hundred bytes each.
    BATCH_BYTES = 512 * 1024
    MAX_REQUEST_BYTES = 1024 * 1024

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        idempotent: bool,
        client_id: str = "campaigns-fanout",
        topic: str = DELIVERY_REQUESTS,
    ) -> None:
        self.topic = topic
        self._settings: dict[str, object] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": client_id,
            "acks": "all",
            "linger_ms": 0,
            "enable_idempotence": idempotent,
            "max_batch_size": self.BATCH_BYTES,
            "max_request_size": self.MAX_REQUEST_BYTES,
        }
        self._producer = AIOKafkaProducer(**self._settings)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce every (key, value) of ``records`` and return once all are acked; raises
        if any was not (the caller retries the whole batch: the records are identical and
        delivery claims each message id once)."""
        if not records:
            return
        try:
            await self._write(records)
        except PRODUCER_BROKEN:
            # A refused batch of an idempotent producer leaves a sequence gap that fails every
            # later send to its partition until the producer id changes.
            log.warning("restarting the fan-out's Kafka producer", exc_info=True)
            await self._restart()
            raise

    async def _write(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        producer = self._producer
        partitions = sorted(await producer.partitions_for(self.topic))
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in partitions}
        chosen = partitions_of([key for key, _ in records], partitions)
        for record, partition in zip(records, chosen, strict=True):
            by_partition[partition].append(record)
        headers = inject_headers()
        futures: list[asyncio.Future[object]] = []
        for partition, rows in by_partition.items():
            i = 0
            while i < len(rows):
                batch = producer.create_batch()
                start = i
                while i < len(rows):
                    key, value = rows[i]
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        break
                    i += 1
                if i == start:
                    raise RecordTooLarge(f"a record of {len(rows[i][1])} bytes fits no batch")
                batch.close()
                futures.append(await producer.send_batch(batch, self.topic, partition=partition))
        await asyncio.gather(*futures)

    async def _restart(self) -> None:
        old = self._producer
        self._producer = AIOKafkaProducer(**self._settings)
        await self._producer.start()
        try:
            await asyncio.wait_for(old.stop(), 10)
        except Exception:
            log.warning("the replaced Kafka producer did not stop cleanly", exc_info=True)


def record_key(contact_id: str) -> bytes:
    return contact_id.encode()


__all__ = [
    "DeliveryRequestWriter",
    "RecordTooLarge",
    "RequestTemplate",
    "campaign_message_id",
    "murmur2_many",
    "partitions_of",
    "record_key",
    "request_template",
]
