"""Property tests of the two parsers that read untrusted input: the request validator and the
config loader. Whatever they are given, they answer with their own error type, never a crash."""

from __future__ import annotations

import string
from typing import Any

import msgspec
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api import ImageRequest
from gateway.catalog import openai_image_models
from gateway.config import Config, ConfigError
from gateway.config_load import config_from_env, parse_config
from gateway.errors import ErrorBody, GatewayError
from gateway.http_client import HTTPClient
from gateway.plan import make_plan
from gateway.runtime import Resources, build_runtime
from gateway.upstream_http import UpstreamHTTP
from gateway.validation import capability_error, decode_request

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)

FIELDS = [f.encode_name for f in msgspec.structs.fields(ImageRequest)]
VALID = {"model": "openai/gpt-image-2", "prompt": "A small red cube", "size": "1024x1024", "n": 2,
         "quality": "low", "output_format": "webp", "output_compression": 50, "background": "transparent",
         "moderation": "low", "user": "u1", "extra": {"fallbacks": ["openai/gpt-image-1"], "deadline_s": 30}}
# Values that are close to valid: the right type, the edges of ranges, the wrong case, sizes.
near_values = (json_values | st.sampled_from([0, 1, 10, 11, -1, 100, 101, 3600, 3600.5, 1e308, "", " ", "auto",
                                              "AUTO", "1024x1024", "1024X1024", "0x0", "16x16", "3840x1280",
                                              "99999999999999999999x1", "x", "1024x", "png", "gif", True,
                                              "openai/", "/x", "a/b/c", [], {}, [None], {"fallbacks": None}])
               | st.from_regex(r"\A[0-9]{1,6}x[0-9]{1,6}\Z"))


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    changed = st.dictionaries(st.sampled_from(FIELDS + ["unknown_field", "extra"]), near_values, max_size=3)
    dropped = st.sets(st.sampled_from(list(VALID)), max_size=2)
    return st.builds(lambda c, d: {k: v for k, v in {**VALID, **c}.items() if k not in d}, changed, dropped)


def assert_openai_error(exc: GatewayError) -> None:
    body = msgspec.json.decode(msgspec.json.encode(exc.to_body()))
    assert set(body) <= {"error", "extra"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert 400 <= exc.status < 500
    msgspec.json.decode(msgspec.json.encode(exc.to_body()), type=ErrorBody)


#: Every catalogue model, served by the local provider, and a key that may use them all.
ENV = config_from_env({})
RUNTIME = build_runtime(ENV.config, Resources(UpstreamHTTP(HTTPClient())))
KEY = ENV.config.keys[0]


def validate_fully(data: bytes) -> None:
    """The whole validation a request body meets before routing: the decode and the plan."""
    try:
        request, unknown = decode_request(data)
        assert isinstance(request, ImageRequest)
        make_plan(request, unknown, KEY, RUNTIME)
    except GatewayError as exc:
        assert_openai_error(exc)


@FUZZ
@given(json_values)
def test_any_json_value_is_accepted_or_refused_in_openai_shape(value: Any) -> None:
    validate_fully(msgspec.json.encode(value))


@FUZZ
@given(_mutations())
def test_near_valid_bodies_are_accepted_or_refused_in_openai_shape(body: dict[str, Any]) -> None:
    validate_fully(msgspec.json.encode(body))


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_are_refused_in_openai_shape(data: bytes) -> None:
    validate_fully(data)


def test_the_valid_body_is_valid() -> None:
    """Guards the generators above: their base must pass, or every mutation would be an error."""
    request, unknown = decode_request(msgspec.json.encode(VALID))
    assert capability_error(request, openai_image_models()["openai/gpt-image-2"].capabilities) is None
    assert unknown == {}
    assert make_plan(request, unknown, KEY, RUNTIME).candidates


# The config loader: arbitrary structures that use the real section and field names.
SECTION_KEYS = ["server", "providers", "models", "aliases", "keys", "router", "admin_keys", "limits", "nope"]
FIELD_KEYS = ["id", "plugin", "region", "settings", "targets", "fallbacks", "capabilities", "name", "hash",
              "models", "enabled", "port", "host", "max_body_bytes", "attempt_timeout_s", "deadline_s",
              "provider", "weight", "price", "sizes", "max_n", "openai/gpt-image-1", "${HOME}", "x"]
yaml_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(string.printable, max_size=20) | st.sampled_from(["${UNSET_VAR}", "${X:-1}", "openai",
                                                                           "sha256:" + "0" * 64, "*"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(FIELD_KEYS), inner, max_size=4), max_leaves=15)
configs = st.dictionaries(st.sampled_from(SECTION_KEYS), yaml_values, max_size=4)


def _parse(text: str) -> None:
    try:
        config = parse_config(text, env={"X": "2"})
    except ConfigError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        return
    assert isinstance(config, Config)


@FUZZ
@given(configs)
def test_config_structures_parse_or_raise_config_error(raw: dict[str, Any]) -> None:
    _parse(yaml.safe_dump(raw))


@FUZZ
@given(st.text(string.printable, max_size=120) | yaml_values.map(yaml.safe_dump))
def test_config_text_parses_or_raises_config_error(text: str) -> None:
    _parse(text)
