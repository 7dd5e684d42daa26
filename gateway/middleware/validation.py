"""The one entry into validation: the body the previous link read (gateway/middleware/body.py)
decoded into the one request type, then the request plan (gateway/plan.py) made from it, before
the handler runs. A JSON edit's data: URLs become held images here."""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import BODY, PLAN, PRINCIPAL, RECORD, RUNTIME
from gateway.bounded import NAME_CHARS, clip
from gateway.edit_form import inputs_from_json
from gateway.middleware import Handler, Next
from gateway.plan import make_plan
from gateway.uploads import UploadLimits
from gateway.validation import decode_fields, decode_request


@web.middleware
def validation_middleware(request: web.Request, handler: Handler) -> Next:
    # Taken out of the request: once decoded, its bytes are a second copy of the prompt, which
    # would wait with the request for its upstream (an edit's images are held by the body link).
    body = request.pop(BODY, None)
    if body is None:
        return handler(request)
    runtime = request[RUNTIME]
    if body.raw is not None:
        decoded, unknown = decode_request(body.raw)
        if body.edit:
            server = runtime.config.server
            body.inputs = inputs_from_json(decoded, UploadLimits(
                server.max_upload_bytes, server.max_upload_total_bytes, server.upload_memory_bytes))
    else:
        decoded, unknown = decode_fields(body.fields or {})
    record = request[RECORD]
    record.model_asked = clip(decoded.model, NAME_CHARS) if decoded.model is not None else None
    plan = request[PLAN] = make_plan(decoded, unknown, request[PRINCIPAL], runtime, body.inputs)
    record.model = plan.route.id
    return handler(request)
