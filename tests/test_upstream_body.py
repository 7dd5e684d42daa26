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


@pytest.mark.parametrize("stray", [b"\xff\xfe", b"\xc3\xa9", b"\x00", b"\x1f", b"\x7f", b" ", b"-", b"_", b"'", b"{"],
                         ids=["invalid utf-8", "utf-8 e-acute", "NUL", "control", "DEL", "space", "urlsafe -",
                              "urlsafe _", "quote", "brace"])
@pytest.mark.parametrize("at", ["start", "middle", "end", "second image"])
def test_bytes_outside_base64_in_a_large_answer_are_refused(stray: bytes, at: str) -> None:
    """The skeleton path skips msgspec for the base64: it must not vouch for bytes that make the
    body invalid JSON (or not an image): a 502 invalid_upstream_response, never a 200 relayed."""
    bad = {"start": stray + B64.encode(), "middle": B64.encode()[:5000] + stray + B64.encode()[5000:],
           "end": B64.encode() + stray, "second image": B64.encode()}[at]
    second = B64.encode()[:100] + stray + b"AA" if at == "second image" else B64.encode()
    raw = b'{"created":1,"data":[{"b64_json":"' + bad + b'"},{"b64_json":"' + second + b'"}]}'
    assert len(raw) > SKELETON_ABOVE_BYTES
    with pytest.raises(ProviderError) as info:
        parse_upstream(raw)
    assert (info.value.status, info.value.code, info.value.retryable) == (502, "invalid_upstream_response", True)
    assert "not base64" in info.value.message


@pytest.mark.parametrize("where", [b'{"\xff":1,', b'{"x":"\xc3\x28",', b'{"x":{"\xe2\x82":[1]},'],
                         ids=["unknown key", "unknown field's value", "nested key"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_invalid_utf8_where_msgspec_does_not_look_is_refused(where: bytes, size: str) -> None:
    """msgspec skips unknown fields and keeps ``data`` items raw without checking their UTF-8
    (found by tests/test_fuzz_upstream.py): the body would reach the client as a 200 that no
    JSON parser accepts."""
    pad = B64.encode() if size == "large" else b"QUFB"
    for raw in (where + b'"data":[{"b64_json":"' + pad + b'"}]}', b'{"data":[{"b64_json":"' + pad + b'","x":"\xff"}]}'):
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(raw)  # not JSON at all
        with pytest.raises(ProviderError) as info:
            parse_upstream(raw)
        assert (info.value.status, info.value.code) == (502, "invalid_upstream_response")


def test_valid_utf8_anywhere_is_fine() -> None:
    raw = '{"created":1,"data":[{"b64_json":"QUFB","revised_prompt":"un cube rouge, été"}],"x":"日本"}'.encode()
    for body in (raw, raw[:-1] + b"," + b'"pad":"' + B64.encode() + b'"}'):
        assert len(parse_upstream(body).data) == 1


def test_padding_and_the_whole_alphabet_pass() -> None:
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    raw = b'{"data":[{"b64_json":"' + alphabet * 2000 + b'=="}]}'
    assert len(raw) > SKELETON_ABOVE_BYTES and len(parse_upstream(raw).data) == 1


def _has_non_base64_b64_json(value: object) -> bool:
    """A ``"b64_json"`` key anywhere whose string holds a character outside base64's alphabet."""
    if isinstance(value, dict):
        return any((k == "b64_json" and isinstance(v, str) and v.strip(_ALPHABET)) or _has_non_base64_b64_json(v)
                   for k, v in value.items())
    return isinstance(value, list) and any(_has_non_base64_b64_json(v) for v in value)


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(extra=st.dictionaries(st.sampled_from(["created", "data", "usage", "b64_json", "x"]), JSON_VALUES,
                             max_size=3),
       payload=st.sampled_from([B64, 'ab\\"cd' + B64, B64 + "\\u0041", "", B64[:99] + "\u00e9" + B64[99:],
                                B64 + " ", "\x7f" + B64]),
       cut=st.integers(min_value=0, max_value=40))
def test_same_verdict_as_a_whole_decode(extra: dict, payload: str, cut: int) -> None:
    """The same verdict as decoding the body whole, except that a ``b64_json`` string that is
    not base64 may be refused (it is, unless it holds a JSON escape: then the body is decoded
    whole, and the escape decides nothing the decoder would not)."""
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
        try:
            got = parse_upstream(candidate)
        except ProviderError as exc:
            assert "not base64" in exc.message and _has_non_base64_b64_json(msgspec.json.decode(candidate)), exc
            continue
        assert len(got.data) == len(expected.data) and got.usage == expected.usage
