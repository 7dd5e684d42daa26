"""Reading upstream answers: large bodies are checked through their skeleton, with the same
verdicts as decoding them whole."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.provider import ProviderError
from gateway.upstream import SKELETON_ABOVE_BYTES, _decoder, parse_upstream, skeleton

B64 = base64.b64encode(bytes(range(256)) * 400).decode()  # 136 KB: above the skeleton threshold
USAGE = {"input_tokens": 20, "output_tokens": 1056, "total_tokens": 1076}


def body(**fields: object) -> bytes:
    return msgspec.json.encode({"created": 1, "data": [{"b64_json": B64}], "usage": USAGE, **fields})


def test_large_body_is_read_through_its_skeleton() -> None:
    big = body(data=[{"b64_json": B64}, {"b64_json": B64}])
    assert len(big) > SKELETON_ABOVE_BYTES
    assert skeleton(big) == msgspec.json.encode(
        {"created": 1, "data": [{"b64_json": ""}, {"b64_json": ""}], "usage": USAGE})
    parsed = parse_upstream(big)
    assert len(parsed.data) == 2 and parsed.usage is not None and parsed.usage.total_tokens == 1076


def test_pretty_printed_answer_as_openai_sends_it() -> None:
    pretty = ('{\n  "created": 1,\n  "data": [\n    {\n      "b64_json" : "' + B64 +
              '"\n    }\n  ],\n  "usage": {"input_tokens": 20}\n}').encode()
    assert b"b64_json\" : \"\"" in skeleton(pretty)
    assert parse_upstream(pretty).usage.input_tokens == 20  # type: ignore[union-attr]


@pytest.mark.parametrize("broken", [
    body()[:-1],                                           # truncated
    body()[: len(body()) // 2],                           # cut inside the base64
    body().replace(b'"usage"', b'"usage" 1', 1),          # malformed skeleton
    msgspec.json.encode({"created": 1, "images": [{"b64_json": B64}]}),  # no data
    msgspec.json.encode({"data": {"b64_json": B64}}),     # data not an array
    b"<html>" + B64.encode() + b"</html>",               # not JSON at all
])
def test_broken_large_bodies_are_refused(broken: bytes) -> None:
    with pytest.raises(ProviderError) as info:
        parse_upstream(broken)
    assert info.value.status == 502 and info.value.code == "invalid_upstream_response"


@pytest.mark.parametrize("where", ["data", "usage", "unknown", "extra"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_deeply_nested_bodies_are_invalid_answers(where: str, size: str) -> None:
    """msgspec stops at the recursion limit with RecursionError (tests/test_upstream_faults.py
    cites where), on both paths: the whole decode and the skeleton's."""
    depth = 5_000 if size == "small" else 50_000  # 5 and 50 times the default recursion limit
    deep = b"[" * depth + b"]" * depth
    pad = B64 if size == "large" else "AAAA"
    fields = {"data": b'[{"b64_json":"' + pad.encode() + b'"}]'}
    # Where a typed field would refuse the first bracket at once, the depth sits in a field it skips.
    fields["x" if where == "unknown" else where] = (b"[" + deep + b"]" if where == "data" else
                                                  deep if where == "unknown" else b'{"a":' + deep + b"}")
    raw = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    assert (len(raw) > SKELETON_ABOVE_BYTES) == (size == "large")
    with pytest.raises(ProviderError) as info:
        parse_upstream(raw)
    assert info.value.status == 502 and info.value.code == "invalid_upstream_response"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(extra=st.dictionaries(st.sampled_from(["created", "data", "usage", "b64_json", "x"]), JSON_VALUES,
                             max_size=3),
       payload=st.sampled_from([B64, 'ab\\"cd' + B64, B64 + "\\u0041", ""]),
       cut=st.integers(min_value=0, max_value=40))
def test_same_verdict_as_a_whole_decode(extra: dict, payload: str, cut: int) -> None:
    doc = {"data": [{"b64_json": payload}], **extra}
    raw = msgspec.json.encode(doc).replace(b"\\\\", b"\\")  # let the escapes in payload stand
    raw = raw + b" " * SKELETON_ABOVE_BYTES  # large enough for the skeleton path
    for candidate in (raw, raw[: len(raw) - SKELETON_ABOVE_BYTES - cut]):
        try:
            expected = _decoder.decode(candidate)
        except msgspec.DecodeError:
            with pytest.raises(ProviderError):
                parse_upstream(candidate)
            continue
        got = parse_upstream(candidate)
        assert len(got.data) == len(expected.data) and got.usage == expected.usage
