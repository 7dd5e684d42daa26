"""A request's body as read from the client, before anything is judged of it (gateway/middleware/
body.py reads it; the idempotency link fingerprints it; the validation link decodes it)."""

from __future__ import annotations

import hashlib

from gateway.uploads import EditInputs


class Body:
    """A JSON body (``raw``), or a multipart edit (its text ``fields`` and held ``inputs``)."""

    __slots__ = ("raw", "fields", "inputs", "edit", "_holders")

    def __init__(self, *, raw: bytes | None = None, fields: dict[str, str] | None = None,
                 inputs: EditInputs | None = None, edit: bool = False) -> None:
        self.raw = raw
        self.fields = fields
        #: An edit's images: read with a multipart body, decoded from data: URLs by validation.
        self.inputs = inputs
        self.edit = edit
        #: Who still uses the images: the request, and an idempotent request's run that outlives
        #: its client (gateway/middleware/idempotency.py). The last ``close`` lets them go.
        self._holders = 1

    def fingerprint(self, route: str) -> str:
        """What makes two requests the same request: the route and the body's bytes (a JSON body),
        or the form's fields and its files' digests, in order (a multipart edit)."""
        digest = hashlib.sha256(route.encode() + b"\n")
        if self.raw is not None:
            digest.update(self.raw)
        else:
            for name, value in sorted((self.fields or {}).items()):
                digest.update(f"{name}={value}\n".encode())
            if self.inputs is not None:
                digest.update(self.inputs.fingerprint.encode())
        return digest.hexdigest()

    def hold(self) -> None:
        self._holders += 1

    def close(self) -> None:
        self._holders -= 1
        if self._holders == 0 and self.inputs is not None:
            self.inputs.close()
