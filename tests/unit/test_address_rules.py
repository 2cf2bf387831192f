"""Which of the hub's addresses are offered to people (status page, log, `discover --self`), in what order."""

from __future__ import annotations

from hub.discovery import people_urls

P = "/api/data/v1/telemetry"


def test_link_local_is_never_offered_and_ipv4_comes_first() -> None:
    urls = people_urls(["fe80::1", "fd12:3456::9", "2001:db8::5", "192.168.1.10", "169.254.3.4"], "Kamla-Pi", 9001, P)
    assert urls == [
        f"http://192.168.1.10:9001{P}",
        f"http://[2001:db8::5]:9001{P}",
        f"http://kamla-pi.local:9001{P}",
        f"http://[fd12:3456::9]:9001{P}",
    ]
    assert not any("fe80" in u or "169.254" in u or "%25" in u for u in urls)


def test_the_mdns_name_is_offered_even_without_an_address() -> None:
    assert people_urls([], "pi.lan", 9443, P, "https") == [f"https://pi.local:9443{P}"]
    assert people_urls(["10.0.0.2"], "", 9001, P) == [f"http://10.0.0.2:9001{P}"]
