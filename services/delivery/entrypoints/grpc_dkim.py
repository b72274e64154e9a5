"""DKIM keys over gRPC: SetDkimKey, ListDkimKeys, DeleteDkimKey (a mixin of the servicer).

One key per sending domain of the caller's workspace. SetDkimKey takes a PEM private key, or
makes an RSA 2048 one, and answers the DNS TXT record to publish; no answer ever carries the
private key, and no log line names it. A domain that has a key keeps it until it is deleted:
a retried SetDkimKey (same selector, same key or none given) answers the stored key rather
than replacing a key whose record may already be published; anything else is ALREADY_EXISTS.
"""

from __future__ import annotations

import logging

import asyncpg
import grpc
from nudge.delivery.v1 import delivery_pb2

from services.common import clock
from services.common.auth import current_workspace
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from services.delivery.adapters import dkim_keys
from services.delivery.domain import dkim
from services.delivery.domain.sealing import Sealer, SealError

log = logging.getLogger(__name__)


def _answer(key: dkim_keys.StoredKey) -> delivery_pb2.DkimKey:
    answer = delivery_pb2.DkimKey(
        domain=key.domain,
        selector=key.selector,
        dns_record_name=dkim.dns_record_name(key.selector, key.domain),
        dns_record_value=key.dns_record_value,
    )
    answer.created_at.FromDatetime(key.created_at)
    return answer


def _domain(value: str, field: str = "domain") -> str:
    domain = dkim.normalise_domain(value)
    if domain is None:
        raise InvalidArgument(
            FieldViolation(field, "a domain name such as shop.example.com (A-labels for IDN)")
        )
    return domain


class DkimKeysMixin:
    """Mixed into DeliveryServicer, which sets ``pool`` and, when it signs in this process,
    ``dkim_cache`` (dropped for a changed domain so that the change is seen at once here)."""

    pool: asyncpg.Pool
    sealer: Sealer
    dkim_cache: dkim_keys.KeyCache | None = None

    async def SetDkimKey(
        self, request: delivery_pb2.SetDkimKeyRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.DkimKey:
        workspace_id = current_workspace()
        violations = []
        domain = dkim.normalise_domain(request.domain)
        if domain is None:
            violations.append(
                FieldViolation(
                    "domain", "a domain name such as shop.example.com (A-labels for IDN)"
                )
            )
        selector = dkim.normalise_selector(request.selector)
        if selector is None:
            violations.append(
                FieldViolation("selector", "DNS labels of letters, digits and hyphens, e.g. nudge")
            )
        material: dkim.KeyMaterial | None = None
        if request.private_key_pem:
            try:
                material = dkim.load_private_key(request.private_key_pem)
            except dkim.DkimKeyError as err:
                violations.append(FieldViolation("private_key_pem", str(err)))
        if violations:
            raise InvalidArgument(violations)
        assert domain is not None and selector is not None
        try:
            async with self.pool.acquire() as conn:
                existing = await dkim_keys.find(conn, workspace_id, domain, self.sealer)
        except SealError as err:
            raise FailedPrecondition(f"{err}; delete the key and set it again") from err
        if existing is not None:
            return self._replayed(existing, selector, material)
        if material is None:
            material = dkim.generate_rsa_key()
        async with self.pool.acquire() as conn:
            inserted = await dkim_keys.insert(
                conn, workspace_id, domain, selector, material, clock.now(), self.sealer
            )
            stored = await dkim_keys.find(conn, workspace_id, domain, self.sealer)
        assert stored is not None
        if not inserted:  # a concurrent call stored its key first
            return self._replayed(stored, selector, material)
        self._forget(workspace_id, domain)
        log.info("DKIM key set for %s (selector %s, %s)", domain, selector, material.algorithm)
        return _answer(stored[0])

    def _replayed(
        self,
        existing: tuple[dkim_keys.StoredKey, str],
        selector: str,
        material: dkim.KeyMaterial | None,
    ) -> delivery_pb2.DkimKey:
        stored, pem = existing
        same_key = material is None or material.pem == pem
        if stored.selector == selector and same_key:
            return _answer(stored)
        raise AlreadyExists(
            f"{stored.domain} has a DKIM key already (selector {stored.selector});"
            " delete it first to replace it"
        )

    async def ListDkimKeys(
        self, request: delivery_pb2.ListDkimKeysRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.ListDkimKeysResponse:
        async with self.pool.acquire() as conn:
            keys = await dkim_keys.list_keys(conn, current_workspace())
        return delivery_pb2.ListDkimKeysResponse(keys=[_answer(k) for k in keys])

    async def DeleteDkimKey(
        self, request: delivery_pb2.DeleteDkimKeyRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.DeleteDkimKeyResponse:
        workspace_id = current_workspace()
        domain = _domain(request.domain)
        async with self.pool.acquire() as conn:
            deleted = await dkim_keys.delete(conn, workspace_id, domain)
        if not deleted:
            raise NotFound(f"no DKIM key for {domain}")
        self._forget(workspace_id, domain)
        log.info("DKIM key deleted for %s", domain)
        return delivery_pb2.DeleteDkimKeyResponse()

    def _forget(self, workspace_id: str, domain: str) -> None:
        if self.dkim_cache is not None:
            self.dkim_cache.forget(workspace_id, domain)
