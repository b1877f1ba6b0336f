"""``/metrics`` for Prometheus: open, or behind ``[admin] metrics_token`` as a bearer token.

No ``from __future__ import annotations``: FastAPI reads these annotations at run time.
"""

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from dicom_node.admin import metrics
from dicom_node.web.context import Ctx

router = APIRouter()


@router.get("/metrics")
def metrics_endpoint(request: Request, ctx: Ctx) -> Response:
    token = ctx.settings.admin.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not secrets.compare_digest(given.encode(), expected.encode()):
            return PlainTextResponse(
                "bearer token required",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    return Response(metrics.exposition(ctx.registry), media_type=metrics.CONTENT_TYPE)
