"""Request validation faithful to OpenAI's error wording and codes.

Valid bodies take the fast path: one msgspec decode into ``ImageRequest``. Only when that fails
is the body decoded again, generically, and walked against the Struct's own type information
(``msgspec.inspect``) to find the first problem and word it as OpenAI does. The rules therefore
live in one place, the Struct definitions in ``gateway.api``. The model-dependent checks
(``capability_error``, ``unknown_field_error``) answer for one model's capabilities; the request
plan (gateway/plan.py) asks them for every model and target it considers.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import msgspec.inspect as mi

from gateway.api import ImageRequest
from gateway.catalog import Capabilities
from gateway.errors import InvalidRequest, quoted_or
from gateway.uploads import EditInputs

_JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
                    int: "an integer", float: "a decimal number", type(None): "null"}

#: The order OpenAI lists an enum's values in its messages (not the request schema's order);
#: values it does not list (another provider's) follow, before a trailing ``auto``.
_OPENAI_ORDER: dict[str, tuple[str, ...]] = {
    "quality": ("low", "medium", "high", "xhigh", "max", "auto"),
    "size": ("1024x1024", "1024x1536", "1536x1024", "auto"),
    "output_format": ("png", "webp", "jpeg"),
    "background": ("transparent", "opaque", "auto"),
    "moderation": ("auto", "low"),
}
#: What a value of the wrong type in an enum field is told it should have been (GPT Image's values,
#: whatever the model: the type is checked before the model is known).
_TYPE_ENUMS: dict[str, tuple[str, ...]] = {
    **{param: _OPENAI_ORDER[param] for param in ("background", "output_format", "moderation")},
    "quality": ("low", "medium", "high", "auto"),
}

_decoder = msgspec.json.Decoder(ImageRequest)


def decode_request(body: bytes) -> tuple[ImageRequest, dict[str, Any]]:
    """Decode a request body into the request and its unknown top-level fields, or raise the
    InvalidRequest OpenAI would answer with. Unknown fields are judged later, against the
    target model's ``extra_fields``."""
    try:
        return _decoder.decode(body), {}
    except msgspec.ValidationError as exc:
        return _slow_path(body, exc)
    except msgspec.DecodeError:
        raise _invalid_json() from None
    except RecursionError:  # msgspec recurses per nesting level, up to the interpreter's limit
        raise _too_deep() from None


def _invalid_json() -> InvalidRequest:
    return InvalidRequest(
        "We could not parse the JSON body of your request. The OpenAI API expects a JSON "
        "payload, but what was sent was not valid JSON.",
        code="invalid_json",
    )


def _too_deep() -> InvalidRequest:
    return InvalidRequest("We could not parse the JSON body of your request: it is nested too deeply.",
                          code="invalid_json")


def _slow_path(body: bytes, exc: msgspec.ValidationError) -> tuple[ImageRequest, dict[str, Any]]:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:  # the typed decoder can fail on a type before it sees bad syntax
        raise _invalid_json() from None
    except RecursionError:
        raise _too_deep() from None
    return _from_value(value, str(exc))


def decode_fields(fields: dict[str, str], strings: bool = True) -> tuple[ImageRequest, dict[str, Any]]:
    """A multipart form's text fields as the request they stand for: an integer or boolean field
    is read from its text (``n=2``, ``stream=true``), as OpenAI reads forms; then the same checks
    as a JSON body."""
    info = _struct_info(ImageRequest)
    value: dict[str, Any] = dict(fields)
    for field in info.fields:
        text = fields.get(field.encode_name)
        if text is None or not strings:
            continue
        kind = _scalar_kind(field.type)
        if kind == "int":
            try:
                value[field.encode_name] = int(text.strip())
            except ValueError:
                param = field.encode_name
                raise InvalidRequest(
                    f"Invalid type for '{param}': expected an integer, but got a string value that could not be "
                    "converted into an integer.", param=param, code="invalid_type") from None
        elif kind == "bool":
            lowered = text.strip().lower()
            if lowered not in ("true", "false"):
                param = field.encode_name
                raise InvalidRequest(f"Invalid type for '{param}': expected a boolean, but got a string value "
                                     "that could not be converted into a boolean.", param=param,
                                     code="invalid_type")
            value[field.encode_name] = lowered == "true"
    try:
        return msgspec.convert(value, ImageRequest), {}
    except msgspec.ValidationError as exc:
        return _from_value(value, str(exc))


def _scalar_kind(t: mi.Type) -> str | None:
    while isinstance(t, mi.Metadata):
        t = t.type
    for option in t.types if isinstance(t, mi.UnionType) else (t,):
        while isinstance(option, mi.Metadata):
            option = option.type
        if isinstance(option, mi.IntType):
            return "int"
        if isinstance(option, mi.BoolType):
            return "bool"
    return None


def _from_value(value: Any, message: str) -> tuple[ImageRequest, dict[str, Any]]:
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"Invalid type for request body: expected an object, but got {_json_type(value)} instead.",
            code="invalid_type",
        )
    info = _struct_info(ImageRequest)
    known = {f.encode_name for f in info.fields}
    unknown = {k: value.pop(k) for k in list(value) if k not in known}
    problem = _check_object(value, info, "")
    if problem is not None:
        raise problem
    try:
        return msgspec.convert(value, ImageRequest), unknown
    except msgspec.ValidationError:
        # The walker mirrors msgspec's rules; should they ever disagree, msgspec's message stands.
        raise InvalidRequest(message, code="invalid_value") from None


def unknown_field_error(unknown: dict[str, Any], caps: Capabilities) -> InvalidRequest | None:
    """The first field beyond the contract that the model does not allow (``extra_fields``)."""
    for key in unknown:
        if key not in caps.extra_fields:
            return InvalidRequest(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    return None


@functools.cache
def _struct_info(cls: type) -> mi.StructType:
    return mi.type_info(cls)  # type: ignore[return-value]


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), "a value")


def _check_object(value: dict, info: mi.StructType, prefix: str) -> InvalidRequest | None:
    names = {f.encode_name: f for f in info.fields}
    for key in value:
        if key not in names:
            param = f"{prefix}{key}"
            return InvalidRequest(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
    for field in info.fields:
        param = f"{prefix}{field.encode_name}"
        if field.encode_name not in value:
            if field.required:
                return InvalidRequest(
                    f"Missing required parameter: '{param}'.", param=param,
                    code="missing_required_parameter",
                )
            continue
        problem = _check_value(value[field.encode_name], field.type, param)
        if problem:
            return problem
    return None


def _check_value(value: Any, t: mi.Type, param: str) -> InvalidRequest | None:
    while isinstance(t, mi.Metadata):
        t = t.type
    options = t.types if isinstance(t, mi.UnionType) else (t,)
    if value is None and any(isinstance(o, mi.NoneType) for o in options):
        return None
    expected = next(o for o in options if not isinstance(o, mi.NoneType))
    while isinstance(expected, mi.Metadata):
        expected = expected.type
    if isinstance(expected, mi.IntType):
        if type(value) is not int:
            return _wrong_type(param, "an integer", value)
        if expected.ge is not None and value < expected.ge:
            return InvalidRequest(
                f"Invalid '{param}': integer below minimum value. Expected a value >= {expected.ge}, "
                f"but got {value} instead.", param=param, code="integer_below_min_value")
        if expected.le is not None and value > expected.le:
            return InvalidRequest(
                f"Invalid '{param}': integer above maximum value. Expected a value <= {expected.le}, "
                f"but got {value} instead.", param=param, code="integer_above_max_value")
    elif isinstance(expected, mi.FloatType):
        if type(value) not in (int, float):
            return _wrong_type(param, "a number", value)
        if (expected.gt is not None and value <= expected.gt) or (expected.le is not None and value > expected.le):
            low = f"> {expected.gt}" if expected.gt is not None else ""
            return InvalidRequest(
                f"Invalid '{param}': number out of range. Expected a value {low} and <= {expected.le}, "
                f"but got {value} instead.", param=param, code="invalid_value")
    elif isinstance(expected, mi.StrType):
        if not isinstance(value, str):
            enum = _TYPE_ENUMS.get(param)
            if enum is not None:  # OpenAI: "expected one of 'low', 'medium', 'high', or 'auto', but got ..."
                return _wrong_type(param, "one of " + ", ".join(f"'{v}'" for v in enum[:-1]) +
                                   ("," if len(enum) > 2 else "") + f" or '{enum[-1]}'", value)
            return _wrong_type(param, "a string", value)
        if expected.max_length is not None and len(value) > expected.max_length:
            return InvalidRequest(
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{expected.max_length}, but got a string with length {len(value)} instead.",
                param=param, code="string_above_max_length")
        if expected.min_length and len(value) < expected.min_length:
            return InvalidRequest(
                f"Invalid '{param}': empty string. Expected a string with minimum length "
                f"{expected.min_length}, but got an empty string instead.", param=param, code="empty_string")
    elif isinstance(expected, mi.BoolType):
        if not isinstance(value, bool):
            return _wrong_type(param, "a boolean", value)
    elif isinstance(expected, mi.ListType):
        if not isinstance(value, list):
            return _wrong_type(param, "an array", value)
        for i, item in enumerate(value):
            problem = _check_value(item, expected.item_type, f"{param}[{i}]")
            if problem:
                return problem
    elif isinstance(expected, mi.StructType):
        if not isinstance(value, dict):
            return _wrong_type(param, "an object", value)
        return _check_object(value, expected, f"{param}.")
    return None


def _wrong_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param, code="invalid_type")


def _openai_order(param: str, allowed: tuple[str, ...]) -> list[str]:
    order = _OPENAI_ORDER.get(param)
    if order is None:
        return list(allowed)
    known = [v for v in order if v in allowed]  # 'auto' where OpenAI puts it (first for moderation)
    others = [v for v in allowed if v not in order]
    if known and known[-1] == "auto":
        return known[:-1] + others + ["auto"]
    return known + others


def _supported(param: str, value: object, allowed: tuple[str, ...]) -> InvalidRequest:
    quoted = [f"'{a}'" for a in _openai_order(param, allowed)]
    if len(quoted) <= 2:  # OpenAI: "'low' and 'auto'"; three or more take a serial comma
        listing = " and ".join(quoted)
    else:
        listing = ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
    return InvalidRequest(f"Invalid value: '{value}'. Supported values are: {listing}.",
                          param=param, code="invalid_value")


def unsupported_error(req: ImageRequest) -> InvalidRequest | None:
    """Fields the product page documents but the gateway does not serve (yet), whatever the model."""
    if req.partial_images and not req.stream:
        # A non-stream answer could not say why no partial image came: refuse rather than ignore.
        return InvalidRequest(
            "Invalid value for 'partial_images': partial images are sent only when streaming; set "
            "'stream' to true, or leave 'partial_images' out.", param="partial_images", code="invalid_value")
    if req.style is not None:
        return InvalidRequest(
            "Unsupported parameter: 'style' is only supported for dall-e-3, which OpenGateway "
            "does not serve.", param="style", code="unsupported_parameter")
    if req.response_format not in (None, "b64_json"):
        if req.response_format == "url":
            return InvalidRequest(
                "Invalid value: 'url'. GPT Image models always return base64-encoded images "
                "(b64_json); URL responses exist only for dall-e-2 and dall-e-3.",
                param="response_format", code="unsupported_value")
        return _supported("response_format", req.response_format, ("b64_json",))
    return None


def operation_error(req: ImageRequest, inputs: EditInputs | None) -> InvalidRequest | None:
    """What a request cannot carry on its route, whatever the model: an edit's fields sent to
    ``/generations``; on an edit, a mask that is not a PNG with alpha of the first image's size."""
    if inputs is None:
        for param in ("input_fidelity", "images", "mask"):
            if getattr(req, param) is not None:
                return InvalidRequest(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")
        return None
    mask, first = inputs.mask, inputs.images[0]
    if mask is not None:
        if mask.format != "png" or not mask.has_alpha:
            return InvalidRequest("Invalid mask image: the mask must be a PNG image with an alpha channel; "
                                  "its fully transparent areas mark where the image is edited.", param="mask",
                                  code="invalid_image")
        if (mask.width, mask.height) != (first.width, first.height):
            return InvalidRequest(
                f"Invalid mask image: the mask ({mask.width}x{mask.height}) and the image "
                f"({first.width}x{first.height}) must have the same dimensions.", param="mask",
                code="invalid_image_dimensions")
    return None


def capability_error(req: ImageRequest, caps: Capabilities, inputs: EditInputs | None = None) -> InvalidRequest | None:
    """Whether a model (or one deployment of it) with ``caps`` can take the request (an edit's,
    with its ``inputs``): the first model-dependent field it does not accept, or None."""
    if inputs is not None:
        problem = _edit_error(req, caps, inputs)
        if problem is not None:
            return problem
    if req.n is not None and req.n > caps.max_n:
        return InvalidRequest(
            f"Invalid 'n': integer above maximum value. Expected a value <= {caps.max_n}, "
            f"but got {req.n} instead.", param="n", code="integer_above_max_value")
    if req.size is not None and req.size not in caps.sizes:
        problem = _flexible_size_problem(req.size, caps)
        if problem is not None:
            return problem
    for param, allowed in (("quality", caps.qualities), ("background", ("auto", "transparent", "opaque")),
                           ("output_format", caps.output_formats), ("moderation", caps.moderation)):
        value = getattr(req, param)
        if value is not None and value not in allowed:
            return _supported(param, value, allowed)
    fmt = req.output_format or "png"
    if req.background == "transparent" and fmt not in caps.transparent_formats:
        if not caps.transparent_formats:
            return InvalidRequest("Transparent backgrounds are not supported by this model.",
                                  param="background", code="invalid_value")
        return InvalidRequest(
            f"Transparent background requires output_format {quoted_or(caps.transparent_formats)}, "
            f"but got '{fmt}'.", param="background", code="invalid_value")
    if req.output_compression is not None and fmt not in caps.compression_formats:
        return InvalidRequest(
            f"Invalid value for 'output_compression': compression applies only to "
            f"{quoted_or(caps.compression_formats)} output, but output_format is '{fmt}'.",
            param="output_compression", code="invalid_value")
    return None


def _edit_error(req: ImageRequest, caps: Capabilities, inputs: EditInputs) -> InvalidRequest | None:
    if not caps.edits:
        return InvalidRequest("Invalid value for 'model': this model does not edit images "
                              "(POST /v1/images/edits).", param="model", code="invalid_value")
    count = len(inputs.images)
    if count > caps.max_input_images:
        return InvalidRequest(
            f"Invalid 'image': array too long. Expected an array with maximum length {caps.max_input_images}, "
            f"but got an array with length {count} instead.", param="image", code="array_above_max_length")
    if req.input_fidelity is not None:
        if not caps.input_fidelities:
            return InvalidRequest("Unsupported parameter: 'input_fidelity' is not supported with this model.",
                                  param="input_fidelity", code="unsupported_parameter")
        if req.input_fidelity not in caps.input_fidelities:
            return _supported("input_fidelity", req.input_fidelity, caps.input_fidelities)
    return None


#: How OpenAI words a size gpt-image-2's rule refuses (type ``image_generation_user_error``). The
#: edge, aspect and upper pixel messages are the gateway's: OpenAI's have not been published.
_SIZE_RULE_WORDING = {
    "multiple_of": "Invalid size '{size}'. Width and height must both be divisible by {rule.multiple_of}.",
    "max_edge": "Invalid size '{size}'. Width and height must each be at most {rule.max_edge} pixels.",
    "max_aspect": "Invalid size '{size}'. The aspect ratio must be between 1:{rule.max_aspect:g} and "
                  "{rule.max_aspect:g}:1.",
    "min_pixels": "Requested resolution is below the current minimum pixel budget.",
    "max_pixels": "Requested resolution is above the current maximum pixel budget.",
}


def _size_error(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="size", code="invalid_value", type="image_generation_user_error")


def _flexible_size_problem(size: str, caps: Capabilities) -> InvalidRequest | None:
    rule = caps.flexible_sizes
    if rule is None:
        return _supported("size", size, caps.sizes)
    width, sep, height = size.partition("x")
    if not (sep and width.isdigit() and height.isdigit() and width[0] != "0" and height[0] != "0"):
        return _size_error(f"Invalid size '{size}'. Expected WIDTHxHEIGHT, for example '1824x1024'.")
    broken = rule.broken(int(width), int(height))
    if broken:
        return _size_error(_SIZE_RULE_WORDING[broken].format(size=size, rule=rule))
    return None
