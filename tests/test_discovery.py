"""Discovery: the TXT record and names as pure functions, then real mDNS between network namespaces."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from support.netns import Lab, Proc  # tests/ is on sys.path (pytest's rootdir-relative import)

from hub import discovery
from hub.discovery import (
    SERVICE_TYPE,
    Advertiser,
    FoundHub,
    _Addr,
    _senders,
    default_instance_name,
    find_hubs,
    txt_properties,
)

FP = "AB:CD" + ":EF" * 30  # 32 bytes
PROPS = {"path": "/api/data/v1/telemetry", "ver": "1", "hub": "hub-7f3a", "name": "Kamla Nagar", "auth": "1"}


# --- pure ---------------------------------------------------------------------------------------


def test_txt_properties_has_the_contract_keys() -> None:
    props = txt_properties(path="/api/data/v1/telemetry", ver="1", hub_id="hub-7f3a", name="Kamla Nagar", auth=True)
    assert props == PROPS


def test_txt_auth_off_and_tls_normalised() -> None:
    props = txt_properties(path="/p", ver="2", hub_id="h", name="n", auth=False, tls_fingerprint=FP)
    assert props["auth"] == "0"
    assert props["tls"] == "abcd" + "ef" * 30
    assert "tls" not in txt_properties(path="/p", ver="2", hub_id="h", name="n", auth=False)


def test_txt_extra_keys_are_added() -> None:
    props = txt_properties(path="/p", ver="1", hub_id="h", name="n", auth=True, extra={"site": "north", "x": ""})
    assert props["site"] == "north" and props["x"] == ""


@pytest.mark.parametrize("key", ["path", "ver", "hub", "name", "auth", "tls", "Path", "AUTH"])
def test_txt_extra_may_not_override_reserved_keys(key: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        txt_properties(path="/p", ver="1", hub_id="h", name="n", auth=True, extra={key: "evil"})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "api"},
        {"tls_fingerprint": "abc"},
        {"tls_fingerprint": "zz" * 32},
        {"extra": {"a=b": "c"}},
        {"extra": {"": "c"}},
        {"name": "x" * 300},
    ],
)
def test_txt_rejects_what_dns_sd_cannot_carry(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"path": "/p", "ver": "1", "hub_id": "h", "name": "n", "auth": True} | kwargs
    with pytest.raises(ValueError):
        txt_properties(**args)


def test_default_instance_name() -> None:
    assert default_instance_name("Kamla Nagar", "pi-hub.lan") == "telemetry-hub Kamla Nagar on pi-hub"
    assert default_instance_name("", "pi") == "telemetry-hub on pi"
    assert "." not in default_instance_name("St. Mary's", "a.b.c")


@pytest.mark.parametrize("branch", ["ब" * 40, "x" * 100, "Ünïcødé " * 12])
def test_default_instance_name_fits_a_dns_label(branch: str) -> None:
    name = default_instance_name(branch, "raspberrypi-with-a-very-long-host-name-indeed-yes")
    assert len(name.encode()) <= 60  # 63-byte label, 3 left for zeroconf's "-N"
    assert name.startswith("telemetry-hub ") and " on raspberrypi" in name
    Advertiser(instance=name, port=1, properties={})  # accepted as is


@pytest.mark.parametrize("instance", ["", "a.b", "x" * 61, "tab\there"])
def test_advertiser_rejects_bad_instance(instance: str) -> None:
    with pytest.raises(ValueError):
        Advertiser(instance=instance, port=1, properties={})


def test_found_hub_urls() -> None:
    hub = FoundHub("h." + SERVICE_TYPE, ("169.254.1.1", "fd00::1", "fe80::1%eth0"), 9001, {"path": "/api"})
    assert hub.urls() == [
        "http://169.254.1.1:9001/api",
        "http://[fd00::1]:9001/api",
        "http://[fe80::1%25eth0]:9001/api",
    ]


def test_senders_one_per_interface_and_family_and_sticky() -> None:
    addrs = frozenset({
        _Addr("169.254.1.1", "eth0", 2), _Addr("169.254.1.2", "eth0", 2),
        _Addr("fd00::1", "eth0", 2), _Addr("fe80::1", "eth0", 2), _Addr("169.254.9.9", "wlan0", 3),
    })  # fmt: skip
    assert _senders(addrs) == ["169.254.1.1", "169.254.9.9", "fe80::1"]
    assert _senders(addrs, ["169.254.1.2", "fd00::1"]) == ["169.254.1.2", "169.254.9.9", "fd00::1"]


async def test_advertiser_without_address_neither_fails_nor_leaks() -> None:
    adv = Advertiser(instance="Lonely", port=9001, properties={}, interfaces=["thub-nosuch0"], poll_interval=0.05)
    await adv.start()
    assert adv.name == "Lonely." + SERVICE_TYPE
    await adv.close()
    await adv.close()
    await Advertiser(instance="Never started", port=1, properties={}).close()


async def test_poll_loop_survives_errors_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_scan(interfaces: object = ()) -> frozenset[_Addr]:
        raise OSError("netlink went away")

    monkeypatch.setattr(discovery, "_scan", broken_scan)
    caplog.set_level(logging.DEBUG, logger="hub.discovery")
    adv = Advertiser(instance="Unlucky", port=9001, properties={}, poll_interval=0.01)
    await adv.start()
    await asyncio.sleep(0.2)
    assert adv._task is not None and not adv._task.done()
    await adv.close()
    failures = [r for r in caplog.records if "netlink went away" in r.getMessage()]
    assert len(failures) > 3
    assert [r.levelno for r in failures].count(logging.WARNING) == 1


@pytest.mark.slow
async def test_advertise_and_find_on_loopback() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(("127.0.0.1", 5353))
    except OSError as exc:
        pytest.skip(f"cannot share the mDNS port here (avahi with disallow-other-stacks?): {exc}")
    finally:
        probe.close()
    adv = Advertiser(instance="Loop Hub", port=9001, properties=PROPS, interfaces=["127.0.0.1"])
    try:
        await adv.start()
        hubs = [h for h in await find_hubs(1.5, interfaces=["127.0.0.1"]) if h.name == adv.name]
    finally:
        await adv.close()
    assert hubs == [FoundHub(adv.name, ("127.0.0.1",), 9001, PROPS)]


# --- real multicast between namespaces ------------------------------------------------------------

V4_A, V4_B = "169.254.10.1", "169.254.10.2"
V6_A, V6_B = "fd74:6875:6200::a", "fd74:6875:6200::b"
POLL = "0.5"  # s, the advertiser's address poll in these tests


@dataclass
class Pair:
    """Namespace a (the hub) and b (a device) on one LAN."""

    lab: Lab
    a: str
    b: str
    ll_a: str | None = None

    def advertise(self, instance: str, props: dict[str, str] = PROPS, ns: str | None = None) -> Proc:
        args = ["advertise", "--instance", instance, "--port", "9001", "--poll-interval", POLL]
        return self.lab.spawn(ns or self.a, *args, *[f"--prop={k}={v}" for k, v in props.items()])

    def browse_until(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 12.0) -> list[dict[str, Any]]:
        """Run fresh browsers in b until one's result satisfies pred."""
        deadline = time.monotonic() + timeout
        hubs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            proc = self.lab.spawn(self.b, "browse", "--timeout", "1.5", "--json")
            hubs = json.loads(proc.wait_line(lambda line: line.startswith("["), 15))
            proc.stop()
            if pred(hubs):
                return hubs
        raise AssertionError(f"browsers in b never saw what was expected; last result: {hubs}")


def _registered(proc: Proc, timeout: float = 15.0) -> str:
    return proc.wait_line(lambda line: line.startswith("registered "), timeout).removeprefix("registered ")


def _event(line: str) -> tuple[str, str]:
    event = json.loads(line)
    return event["event"], event["name"]


def _hub(hubs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((h for h in hubs if h["name"] == name), None)


def _pair(lab: Lab, *, addresses_a: bool = True) -> Pair:
    """Hub namespace a and device namespace b, whose bridge br0 is the LAN (more hubs can plug in)."""
    a, b = lab.ns("a"), lab.ns("b")
    lab.bridge(b, "br0")
    lab.link(a, "tha0", b, "b-a", linklocal_a=addresses_a, bridge_b="br0")
    lab.addr(b, "br0", f"{V4_B}/16")
    lab.addr(b, "br0", f"{V6_B}/64")
    pair = Pair(lab, a, b)
    if addresses_a:
        lab.addr(a, "tha0", f"{V4_A}/16")
        lab.addr(a, "tha0", f"{V6_A}/64")
        pair.ll_a = lab.linklocal6(a, "tha0")
    lab.linklocal6(b, "br0")
    return pair


@pytest.fixture
def pair(lab: Lab) -> Pair:
    return _pair(lab)


@pytest.mark.slow
@pytest.mark.netns
def test_found_with_addresses_port_and_txt(pair: Pair) -> None:
    name = _registered(pair.advertise("Kamla Nagar Hub"))
    assert name == "Kamla Nagar Hub." + SERVICE_TYPE
    hubs = pair.browse_until(lambda hubs: _hub(hubs, name) is not None)
    hub = _hub(hubs, name)
    assert hub is not None
    assert hub["port"] == 9001
    assert hub["properties"] == PROPS
    assert {V4_A, V6_A, f"{pair.ll_a}%br0"} <= set(hub["addresses"])
    assert not {"127.0.0.1", "::1"} & set(hub["addresses"])
    assert f"http://[{pair.ll_a}%25br0]:9001/api/data/v1/telemetry" in hub["urls"]
    assert f"http://{V4_A}:9001/api/data/v1/telemetry" in hub["urls"]


@pytest.mark.slow
@pytest.mark.netns
def test_address_change_is_announced_without_restart(pair: Pair) -> None:
    adv = pair.advertise("Moving Hub")
    name = _registered(adv)
    pair.browse_until(lambda hubs: _hub(hubs, name) is not None)
    new_v4, new_v6 = "169.254.20.1", "fd74:6875:6201::a"
    pair.lab.addr(pair.a, "tha0", f"{new_v4}/16")
    pair.lab.addr(pair.a, "tha0", f"{new_v6}/64")
    pair.lab.addr(pair.a, "tha0", f"{V4_A}/16", delete=True)
    pair.lab.addr(pair.a, "tha0", f"{V6_A}/64", delete=True)

    # The advertiser may catch the moment both are up and announce all four; a browser that heard
    # that keeps the old ones for 1 s after the next announcement flushes them, so retry.
    def new_only(hubs: list[dict[str, Any]]) -> bool:
        got = set((_hub(hubs, name) or {}).get("addresses", ()))
        return {new_v4, new_v6} <= got and not {V4_A, V6_A} & got

    pair.browse_until(new_only)
    assert adv.popen.poll() is None  # the same process throughout
    stdout = adv.seen + list(adv.lines.queue)
    assert [line for line in stdout if line.startswith("registered ")] == [f"registered {name}"]


@pytest.mark.slow
@pytest.mark.netns
def test_goodbye_reaches_a_running_browser_within_2s(pair: Pair) -> None:
    watch = pair.lab.spawn(pair.b, "watch")
    adv = pair.advertise("Leaving Hub")
    name = _registered(adv)
    watch.wait_line(lambda line: _event(line) == ("added", name), 10)
    sent = time.time()
    assert adv.stop() == 0
    line = watch.wait_line(lambda line: _event(line) == ("removed", name), 5)
    assert json.loads(line)["t"] - sent < 2.0


@pytest.mark.slow
@pytest.mark.netns
def test_same_name_on_the_lan_is_renamed_not_fatal(pair: Pair) -> None:
    # A second host, as in a real LAN: two processes on one address would share port 5353, and
    # the kernel may hand the defending unicast reply to the wrong one.
    c = pair.lab.ns("c")
    pair.lab.link(c, "thc0", pair.b, "b-c", bridge_b="br0")
    pair.lab.addr(c, "thc0", "169.254.10.3/16")
    pair.lab.addr(c, "thc0", "fd74:6875:6200::c/64")
    pair.lab.linklocal6(c, "thc0")
    first = pair.advertise("Twin Hub")
    name1 = _registered(first)
    second = pair.advertise("Twin Hub", props=PROPS | {"hub": "hub-other"}, ns=c)
    name2 = _registered(second)
    assert name1 == "Twin Hub." + SERVICE_TYPE
    assert name2 != name1 and name2.startswith("Twin Hub")
    second.wait_stderr(lambda line: f"advertising as '{name2}'" in line, 5)
    hubs = pair.browse_until(lambda hubs: _hub(hubs, name1) is not None and _hub(hubs, name2) is not None)
    assert (_hub(hubs, name1) or {})["properties"]["hub"] == "hub-7f3a"
    assert (_hub(hubs, name2) or {})["properties"]["hub"] == "hub-other"
    assert first.popen.poll() is None and second.popen.poll() is None


@pytest.mark.slow
@pytest.mark.netns
def test_registers_once_an_address_appears(lab: Lab) -> None:
    pair = _pair(lab, addresses_a=False)
    adv = pair.advertise("Late Hub")
    time.sleep(1.0)  # several polls with no address: must wait, not exit
    assert adv.popen.poll() is None and not adv.seen and adv.lines.empty()
    lab.addr(pair.a, "tha0", f"{V4_A}/16")
    lab.addr(pair.a, "tha0", f"{V6_A}/64")
    name = _registered(adv)
    hubs = pair.browse_until(lambda hubs: {V4_A, V6_A} <= set((_hub(hubs, name) or {}).get("addresses", ())))
    assert (_hub(hubs, name) or {})["port"] == 9001
