"""``POST /v1/images/edits`` bodies: ``multipart/form-data`` as OpenAI takes it, and the JSON form.

Multipart: ``image`` (one file) or repeated ``image[]`` (the SDKs send a list that way), an
optional ``mask`` file, and the other fields as text parts. The files are read as they arrive into
``gateway/uploads.py`` (memory, then temporary files), bounded by the upload limits; the text
fields become the same ``ImageRequest`` a JSON body decodes to (gateway/validation.py), with
multipart's strings read as the integers and booleans they stand for.

JSON (``application/json``): ``images`` is a list of ``{"image_url": ...}`` or ``{"file_id": ...}``
references and ``mask`` one reference. The gateway takes ``data:`` URLs, whose bytes it holds like
an upload; an ``https:`` URL or an OpenAI file id would have the gateway fetch what a client names
(or depend on one provider's file store), so those are refused with a 400 that says to send the
bytes instead.
"""

from __future__ import annotations

import base64
import binascii
from typing import AsyncIterator

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.api import ImageRef, ImageRequest
from gateway.errors import InvalidRequest
from gateway.uploads import EditInputs, InputImage, UploadLimits, read_into, remove_all

#: Text parts longer than this are refused (the prompt is at most 32,000 characters).
MAX_FIELD_BYTES = 256 << 10
#: Text parts allowed beyond the request's own fields (the file parts are image, image[] and mask).
_FILE_FIELDS = ("image", "image[]", "mask")


async def read_multipart(request: web.Request, limits: UploadLimits) -> tuple[dict[str, str], EditInputs]:
    """The form's text fields (decoded later, by gateway/validation.py ``decode_fields``) and its
    images, held."""
    try:
        return await _read_multipart(request, limits)
    except (HttpProcessingError, ValueError):  # aiohttp's reader refused the body itself
        raise InvalidRequest("The multipart body could not be read: a part is malformed (its headers, boundary "
                             "or encoding).", code="invalid_multipart") from None


async def _read_multipart(request: web.Request, limits: UploadLimits) -> tuple[dict[str, str], EditInputs]:
    reader = await request.multipart()
    fields: dict[str, str] = {}
    images: list[InputImage] = []
    mask: InputImage | None = None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):  # a nested multipart: not something OpenAI takes
                raise InvalidRequest("Nested multipart bodies are not supported.", code="invalid_multipart")
            name = part.name or ""
            if name in _FILE_FIELDS:
                image = await read_into(InputImage(name, part.filename), _chunks(part), limits)
                if name == "mask":
                    if mask is not None:
                        raise InvalidRequest("Only one 'mask' file may be sent.", param="mask",
                                             code="invalid_value")
                    mask = image
                else:
                    images.append(image)
                continue
            value = await part.read(decode=True)
            if len(value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"The field '{name}' is too long.", param=name, code="string_above_max_length")
            fields[name] = value.decode("utf-8", "replace")
        if not images:
            raise InvalidRequest("Missing required parameter: 'image'.", param="image",
                                 code="missing_required_parameter")
        return fields, EditInputs(tuple(images), mask)
    except BaseException:
        remove_all(images + ([mask] if mask is not None else []))
        raise


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(256 << 10):
        yield chunk


def inputs_from_json(request: ImageRequest, limits: UploadLimits) -> EditInputs:
    """The images a JSON edit names by ``data:`` URL, held like uploads."""
    if not request.images:
        raise InvalidRequest("Missing required parameter: 'images'.", param="images", code="missing_required_parameter")
    held: list[InputImage] = []
    try:
        for i, ref in enumerate(request.images):
            held.append(_from_ref(ref, f"images[{i}]", limits))
        mask = _from_ref(request.mask, "mask", limits) if request.mask is not None else None
    except BaseException:
        remove_all(held)
        raise
    return EditInputs(tuple(held), mask)


def _from_ref(ref: ImageRef, param: str, limits: UploadLimits) -> InputImage:
    if (ref.image_url is None) == (ref.file_id is None):
        raise InvalidRequest(f"Invalid '{param}': provide exactly one of 'image_url' or 'file_id'.", param=param,
                             code="invalid_value")
    if ref.file_id is not None:
        raise InvalidRequest(f"Invalid '{param}': file ids are not supported by this gateway; send the image itself "
                             "(multipart, or a data: URL in image_url).", param=param, code="unsupported_value")
    url = ref.image_url or ""
    head, sep, data = url.partition(",")
    if not (url.startswith("data:") and sep and head.endswith(";base64")):
        raise InvalidRequest(f"Invalid '{param}': only data: URLs (base64) are supported; the gateway does not "
                             "fetch images from URLs. Send the image itself.", param=param, code="unsupported_value")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"Invalid '{param}': the data URL is not valid base64.", param=param,
                             code="invalid_value") from None
    image = InputImage(param, param)
    limits.take(image, raw)
    image.finish()
    return image
