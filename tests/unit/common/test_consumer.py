"""The consumer loop's pure parts: which failures are permanent, outages or worth a few
retries; what offset a partition may commit; what a dead letter carries."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
import redis.exceptions
from aiokafka import ConsumerRecord
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
)

from services.common.consumer import (
    DLQ_ATTEMPTS,
    DLQ_GROUP,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    FailureKind,
    PartitionProgress,
    UndecodableRecord,
    dead_letter_headers,
    failure_kind,
    handle_record,
)
from services.common.errors import PermanentError, Unavailable


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "details")


class Wrapped(Exception):
    pass


def ended_on_a_broken_connection(outage: BaseException) -> Exception:
    """What asyncpg raises when a transaction's end meets the connection the outage broke:
    an InterfaceError with the outage as its context, not its cause."""
    try:
        try:
            raise outage
        except type(outage):
            raise asyncpg.InterfaceError(  # noqa: B904 (the context is what asyncpg leaves)
                "cannot call Transaction.rollback(): the underlying connection is closed"
            )
    except asyncpg.InterfaceError as err:
        return err


def wrapped(cause: BaseException) -> Exception:
    try:
        raise Wrapped("while talking to a dependency") from cause
    except Wrapped as err:
        return err


@pytest.mark.parametrize(
    "err",
    [
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(),
        TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        KafkaConnectionError(),
        KafkaTimeoutError(),
        NotLeaderForPartitionError(),
        rpc_error(grpc.StatusCode.UNAVAILABLE),
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
        redis.exceptions.ConnectionError(),
        Unavailable("contacts does not answer"),
        wrapped(ConnectionRefusedError()),
        ended_on_a_broken_connection(asyncpg.AdminShutdownError("terminating connection")),
    ],
    ids=type,
)
def test_a_dependency_that_does_not_answer_is_an_outage(err: BaseException) -> None:
    assert failure_kind(err) is FailureKind.OUTAGE


@pytest.mark.parametrize(
    "err",
    [
        PermanentError("no such template"),
        UndecodableRecord("not an envelope"),
        asyncpg.DataError("invalid input syntax"),
        asyncpg.ProgramLimitExceededError("index row size exceeds maximum"),
    ],
    ids=type,
)
def test_what_the_record_itself_causes_is_permanent(err: BaseException) -> None:
    assert failure_kind(err) is FailureKind.PERMANENT


@pytest.mark.parametrize(
    "err",
    [
        RuntimeError("a bug"),
        KeyError("x"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.UniqueViolationError("duplicate key"),
        MessageSizeTooLargeError(),
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT),
        wrapped(RuntimeError("a bug")),
        ended_on_a_broken_connection(RuntimeError("a bug inside the transaction")),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ],
    ids=type,
)
def test_other_failures_are_retried_a_bounded_number_of_times(err: BaseException) -> None:
    assert failure_kind(err) is FailureKind.TRANSIENT


def test_a_partition_commits_below_its_lowest_unfinished_record() -> None:
    progress = PartitionProgress()
    assert progress.committable() is None
    for offset in (10, 11, 12, 13):
        progress.fetched(offset)
    progress.finished(11)
    progress.finished(13)
    assert progress.committable() == 10
    progress.finished(10)
    assert progress.committable() == 12
    progress.committed = 12
    assert progress.committable() is None, "nothing new to commit"
    progress.finished(12)
    assert progress.committable() == 14, "all done: one past the last fetched"


def record(**fields: object) -> ConsumerRecord:
    values: dict[str, object] = {
        "topic": "shop.events.v1",
        "partition": 2,
        "offset": 41,
        "timestamp": 0,
        "timestamp_type": 0,
        "key": b"contact-1",
        "value": b"\x0a\x01x",
        "checksum": None,
        "serialized_key_size": 9,
        "serialized_value_size": 3,
        "headers": (("traceparent", b"00-abc-01"),),
    }
    values.update(fields)
    return ConsumerRecord(**values)


def test_a_dead_letter_says_where_it_came_from_and_why() -> None:
    headers = dead_letter_headers(record(), "segmentation", RuntimeError("boom"), 5)
    assert headers == [
        ("traceparent", b"00-abc-01"),
        (DLQ_TOPIC, b"shop.events.v1"),
        (DLQ_PARTITION, b"2"),
        (DLQ_OFFSET, b"41"),
        (DLQ_GROUP, b"segmentation"),
        (DLQ_REASON, b"RuntimeError: boom"),
        (DLQ_ATTEMPTS, b"5"),
    ]


def test_a_replayed_dead_letter_gets_fresh_dead_letter_headers() -> None:
    again = record(headers=((DLQ_REASON, b"old"), ("traceparent", b"t")))
    headers = dead_letter_headers(again, "g", PermanentError("new"), 1)
    assert [value for key, value in headers if key == DLQ_REASON] == [b"PermanentError: new"]


async def test_a_record_that_is_not_an_envelope_is_permanent() -> None:
    async def handler(envelope: object, rec: object) -> None:
        raise AssertionError("never called")

    with pytest.raises(UndecodableRecord):
        await handle_record(record(value=b"\xff\xff\xff"), handler, "g")
    with pytest.raises(UndecodableRecord):
        await handle_record(record(value=None), handler, "g")
