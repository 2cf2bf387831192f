"""Words, not reprs: upstream's refusals and network failures as branch IT reads them."""

from __future__ import annotations

import errno

import aiohttp

from hub.forward.sunbird_http import network_words
from hub.telemetry import refusal_words


def test_a_dead_letter_reason_is_upstreams_errmsg_not_its_json() -> None:
    raw = (
        'upstream answered 400: {"id":"api.telemetry","ver":"1.0","ets":1714558830123,'
        '"params":{"err":"INVALID_DATA","errmsg":"event LOG has no actor.id"},"responseCode":"CLIENT_ERROR"}'
    )
    assert refusal_words(raw) == "upstream answered 400: event LOG has no actor.id"
    # Without errmsg, the error code; a gateway's {"message": ...}; words stay words.
    assert refusal_words('upstream answered 400: {"params":{"err":"INVALID_DATA"}}') == (
        "upstream answered 400: INVALID_DATA"
    )
    assert refusal_words('upstream answered 400: {"message":"no Route matched"}') == (
        "upstream answered 400: no Route matched"
    )
    assert refusal_words("upstream refuses this event as too large: HTTP 413") == (
        "upstream refuses this event as too large: HTTP 413"
    )
    # A cut-off or unknown answer is left as it is, rather than guessed at.
    assert refusal_words('upstream answered 400: {"params":{"err') == 'upstream answered 400: {"params":{"err'


def test_network_failures_read_as_words() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 9100)")
    assert network_words(refused) == "connection refused"
    text = network_words(aiohttp.ServerDisconnectedError())
    assert text == "the server closed the connection without answering"
    for exc in (refused, aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("x"), OSError()):
        words = network_words(exc)
        assert "Errno" not in words and "(" not in words and "Error" not in words, words
