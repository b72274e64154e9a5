"""``/healthz``: is every service, and every service's dependency, up? For load balancers
and operators; no auth."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.gateway.deps import ChecksDep
from services.gateway.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=HealthOut,
    summary="Check every dependency",
    responses={503: {"model": HealthOut, "description": "Some dependency is down"}},
)
async def healthz(checks: ChecksDep) -> JSONResponse:
    """Each service (`grpc.health.v1`; tracking's `/healthz`) and, under `dependencies`,
    each service's own PostgreSQL, Redis, Kafka and SMTP as that service sees them
    (tracking's Kafka says which broker software and how many brokers), asked concurrently
    with short deadlines. 200 when all are up, 503 (`degraded`) naming what is down. The
    report is reused for up to a second (`GATEWAY_HEALTH_CACHE_S`), however many ask."""
    report = await checks.run()
    ok = all(check["ok"] for check in report.values())
    body = HealthOut.model_validate({"status": "ok" if ok else "degraded", "checks": report})
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=200 if ok else 503,
        headers={"Cache-Control": "no-store"},
    )
