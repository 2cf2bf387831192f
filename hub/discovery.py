"""mDNS / DNS-SD: advertise the hub on the school LAN so devices find it with no setup, and find hubs."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

__all__ = [
    "SERVICE_TYPE",
    "Advertiser",
    "FoundHub",
    "default_instance_name",
    "find_hubs",
    "local_urls",
    "txt_properties",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_sbtelemetry._tcp.local."

_RESERVED_KEYS = frozenset({"path", "ver", "hub", "name", "auth", "tls"})
_MAX_LABEL_BYTES = 63  # DNS label limit, bytes
_RENAME_RESERVE_BYTES = 3  # room for the "-N" zeroconf appends on a name conflict
_MAX_INSTANCE_BYTES = _MAX_LABEL_BYTES - _RENAME_RESERVE_BYTES
_MAX_TXT_ITEM_BYTES = 255  # one "key=value" string in a TXT record, bytes
DEFAULT_POLL_S = 2.0  # s between address scans
_IF_INET6 = "/proc/net/if_inet6"  # Linux: IPv6 addresses with their DAD flags
_IFA_F_UNUSABLE = 0x40 | 0x08  # IFA_F_TENTATIVE | IFA_F_DADFAILED: the kernel will not bind these yet


# --- pure helpers -------------------------------------------------------------------------------


def txt_properties(
    *,
    path: str,
    ver: str,
    hub_id: str,
    name: str,
    auth: bool,
    tls_fingerprint: str | None = None,
    extra: Mapping[str, str] = {},
) -> dict[str, str]:
    """Build the TXT record that lets a device sync with no other knowledge; auth is "1" or "0".

    `tls` is the SHA-256 certificate fingerprint as 64 lowercase hex digits without separators
    (colons and case in the input are normalised); it is present only when given. Raises
    ValueError for a malformed value, or for an `extra` key that would shadow a reserved key
    (DNS-SD keys are case-insensitive) or that DNS-SD cannot carry.
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    props = {"path": path, "ver": ver, "hub": hub_id, "name": name, "auth": "1" if auth else "0"}
    if tls_fingerprint is not None:
        digits = tls_fingerprint.replace(":", "").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digits):
            raise ValueError(f"tls_fingerprint must be a SHA-256 hex digest, got {tls_fingerprint!r}")
        props["tls"] = digits
    for key, value in extra.items():
        if key.lower() in _RESERVED_KEYS:
            raise ValueError(f"extra TXT key {key!r} would override the reserved key {key.lower()!r}")
        if not key or "=" in key or not all(0x20 <= ord(c) <= 0x7E for c in key):
            raise ValueError(f"TXT key {key!r} must be non-empty printable ASCII without '='")
        props[key] = value
    for key, value in props.items():
        if len(f"{key}={value}".encode()) > _MAX_TXT_ITEM_BYTES:
            raise ValueError(f"TXT entry {key!r} is longer than {_MAX_TXT_ITEM_BYTES} bytes")
    return props


def default_instance_name(branch: str, hostname: str) -> str:
    """Name the hub after its branch and host, so branch IT can tell two hubs apart in a browser.

    At most 60 bytes of UTF-8 (a DNS label is 63; 3 are left for zeroconf's "-N" rename).
    Dots and control characters are dropped: other DNS-SD stacks would split the label at a dot.
    """
    host = _clean_label(hostname.split(".", 1)[0]) or "localhost"
    branch = _clean_label(branch)
    tail = f" on {host}"
    if len(tail.encode()) > _MAX_INSTANCE_BYTES // 2:
        tail = _truncate(tail, _MAX_INSTANCE_BYTES // 2)
    head = "telemetry-hub"
    if branch:
        head = _truncate(f"{head} {branch}", _MAX_INSTANCE_BYTES - len(tail.encode()))
    return _truncate(f"{head}{tail}", _MAX_INSTANCE_BYTES)


def _clean_label(text: str) -> str:
    """Drop what DNS-SD instance labels cannot carry safely and squeeze whitespace."""
    text = "".join(" " if c.isspace() else c for c in text if c.isprintable() or c.isspace())
    return " ".join(text.replace(".", "").split())


def _truncate(text: str, limit: int) -> str:
    """Cut to at most limit bytes of UTF-8 without splitting a character."""
    return text.encode()[:limit].decode(errors="ignore").rstrip()


def _check_instance(instance: str) -> None:
    """Reject an instance label zeroconf would mangle or reject only at registration time."""
    if not instance or "." in instance or not instance.isprintable():
        raise ValueError(f"instance name {instance!r} must be non-empty, printable and without '.'")
    if len(instance.encode()) > _MAX_INSTANCE_BYTES:
        raise ValueError(f"instance name {instance!r} is longer than {_MAX_INSTANCE_BYTES} bytes")


def _url_host(address: str) -> str:
    """Format an address for a URL: IPv6 in brackets, a zone encoded as %25 (RFC 6874)."""
    if ":" not in address:
        return address
    ip, _, zone = address.partition("%")
    return f"[{ip}%25{zone}]" if zone else f"[{ip}]"


def _named_zone(address: str) -> str:
    """Write a link-local zone as the interface name ("%eth0"), which people can read, not "%2"."""
    ip, _, zone = address.partition("%")
    if zone.isdigit():
        with contextlib.suppress(OSError):
            return f"{ip}%{socket.if_indextoname(int(zone))}"
    return address


# --- host addresses -----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class _Addr:
    """One usable unicast address of this host."""

    ip: str  # without zone
    ifname: str
    ifindex: int

    @property
    def version(self) -> int:
        return 6 if ":" in self.ip else 4

    @property
    def link_local(self) -> bool:
        return ipaddress.ip_address(self.ip).is_link_local


def _unusable_ipv6() -> set[tuple[str, int]]:
    """Blocking: IPv6 addresses still in DAD, which cannot be bound or reached yet (Linux only)."""
    found: set[tuple[str, int]] = set()
    try:
        with open(_IF_INET6, encoding="ascii") as f:
            for line in f:
                hexip, index, _plen, _scope, flags, *_ = line.split()
                if int(flags, 16) & _IFA_F_UNUSABLE:
                    found.add((str(ipaddress.IPv6Address(int(hexip, 16))), int(index, 16)))
    except (OSError, ValueError):
        pass
    return found


def _scan(interfaces: Sequence[str] = ()) -> frozenset[_Addr]:
    """Blocking: the addresses to advertise; run it in a thread.

    `interfaces` holds interface names or addresses; empty means every non-loopback address.
    """
    wanted_ips, wanted_names = set(), set()
    for entry in interfaces:
        try:
            wanted_ips.add(ipaddress.ip_address(entry.partition("%")[0]))
        except ValueError:
            wanted_names.add(entry)
    unusable = _unusable_ipv6()
    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            addr = ipaddress.ip_address(raw.partition("%")[0])
            index = adapter.index or 0
            if interfaces:
                if (
                    addr not in wanted_ips
                    and adapter.name not in wanted_names
                    and adapter.nice_name not in wanted_names
                ):
                    continue
            elif addr.is_loopback:
                continue
            if (str(addr), index) in unusable:
                continue
            found.add(_Addr(str(addr), adapter.name, index))
    return frozenset(found)


def _senders(addrs: frozenset[_Addr], previous: Sequence[str] = ()) -> list[str]:
    """Pick one address per interface and family for zeroconf: a second join of the group fails.

    Keeps the previous pick while it lasts (no socket churn), else prefers IPv6 link-local, which
    outlives prefix changes, and IPv4 that is not link-local, which outlives DHCP arriving.
    """
    kept = set(previous)
    chosen: dict[tuple[int, int], str] = {}
    for a in sorted(addrs, key=lambda a: (a.ip not in kept, a.link_local != (a.version == 6), a.ip)):
        chosen.setdefault((a.ifindex, a.version), a.ip)
    return sorted(chosen.values())


def _ip_version() -> IPVersion:
    """Both families when the kernel has IPv6, so the listen socket never needs a rebuild."""
    if not socket.has_ipv6:
        return IPVersion.V4Only
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        return IPVersion.V4Only
    return IPVersion.All


def _rank(ip: str) -> int | None:
    """Where an address goes in a list for people: IPv4, global IPv6, then (after the mDNS name) ULA.

    Link-local addresses (fe80::, 169.254.x.x) are None: useless to a phone (they need a zone, and
    browsers refuse them), so they are never offered to people.
    """
    addr = ipaddress.ip_address(ip)
    if addr.is_link_local:
        return None
    if addr.version == 4:
        return 0
    return 3 if addr in ipaddress.ip_network("fc00::/7") else 1


def people_urls(ips: Sequence[str], hostname: str, port: int, path: str, scheme: str = "http") -> list[str]:
    """The URLs to offer people for these addresses: IPv4 and global IPv6 first, then <host>.local, then ULA."""
    ranked = sorted((r, ip) for ip in set(ips) if (r := _rank(ip)) is not None)
    hosts = [ip for r, ip in ranked if r < 3]
    label = re.sub(r"[^a-z0-9-]+", "-", hostname.split(".")[0].lower()).strip("-")
    if label:
        # The name avahi (on by default in Raspberry Pi OS) publishes for the host itself.
        hosts.append(f"{label}.local")
    hosts += [ip for r, ip in ranked if r == 3]
    return [f"{scheme}://{_url_host(h)}:{port}{path}" for h in hosts]


def local_urls(port: int, path: str, scheme: str = "http") -> list[str]:
    """The hub's own URLs for people: on each usable address and its mDNS name (see people_urls).

    Blocking (reads the interface list); from async code call it via asyncio.to_thread.
    """
    return people_urls([a.ip for a in _scan()], socket.gethostname(), port, path, scheme)


# --- advertising --------------------------------------------------------------------------------


class Advertiser:
    """Keep the hub registered over mDNS while the host's addresses come, go and change."""

    def __init__(
        self,
        *,
        instance: str,
        port: int,
        properties: dict[str, str],
        interfaces: Sequence[str] = (),
        poll_interval: float = DEFAULT_POLL_S,
    ) -> None:
        _check_instance(instance)
        self._instance = instance
        self._port = port
        self._properties = dict(properties)
        self._interfaces = tuple(interfaces)
        self._poll_interval = poll_interval
        # Unique per start: cloned SD-card images share host names, and two hubs publishing
        # A records under one host name would merge their addresses in every client.
        host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")[:40]
        self._server = f"{host or 'hub'}-{secrets.token_hex(3)}.local."
        self._ip_version = _ip_version()
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._addrs: frozenset[_Addr] = frozenset()
        self._senders: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._seen_problems: set[str] = set()
        self.registered = asyncio.Event()

    @property
    def name(self) -> str:
        """The full service name, as renamed by zeroconf if another hub held the requested one."""
        return self._info.name if self._info is not None else f"{self._instance}.{SERVICE_TYPE}"

    async def start(self) -> None:
        """Register now if the host has an address, else as soon as one appears; never fails on the network."""
        if self._task is not None or self._closed:
            return
        try:
            await self._reconcile()
        except Exception as exc:
            self._warn_once("registration", exc)
        if not self._closed:  # close() may have run while we were registering
            self._task = asyncio.create_task(self._poll(), name="discovery-poll")

    async def close(self) -> None:
        """Say goodbye on the LAN and release the sockets; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # never swallows our own cancellation
        aiozc, info = self._aiozc, self._info
        self._aiozc = None
        if aiozc is None:
            return
        try:
            if info is not None:
                await (await aiozc.async_unregister_service(info))
                log.info("withdrew %s", info.name)
        except Exception as exc:
            log.warning("could not send mDNS goodbye for %s: %s", info.name if info else "?", exc)
        finally:
            await aiozc.async_close()

    async def _poll(self) -> None:
        """Rescan addresses forever; problems are logged, never raised, so discovery cannot kill the hub."""
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self._reconcile()
            except Exception as exc:
                self._warn_once("address update", exc)

    async def _reconcile(self) -> None:
        """Register, re-announce or go quiet to match the current addresses."""
        addrs = await asyncio.to_thread(_scan, self._interfaces)
        if self._info is None:
            if addrs:
                await self._register(addrs)
        elif addrs != self._addrs:
            await self._update(addrs)

    async def _register(self, addrs: frozenset[_Addr]) -> None:
        """First registration; zeroconf probes the name and renames it on a conflict."""
        senders = _senders(addrs)
        aiozc = AsyncZeroconf(interfaces=senders, ip_version=self._ip_version)
        self._aiozc = aiozc
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self._instance}.{SERVICE_TYPE}",
            port=self._port,
            properties=self._properties,
            server=self._server,
            addresses=_packed(addrs),
        )
        try:
            await (await aiozc.async_register_service(info, allow_name_change=True))
        except BaseException:
            self._aiozc = None
            await aiozc.async_close()
            raise
        self._info, self._addrs, self._senders = info, addrs, senders
        if info.name != f"{self._instance}.{SERVICE_TYPE}":
            log.info("another hub holds the name %r on the LAN; advertising as %r", self._instance, info.name)
        log.info("advertising %s on port %d at %s", info.name, self._port, _describe(addrs))
        self.registered.set()

    async def _update(self, addrs: frozenset[_Addr]) -> None:
        """Move zeroconf's sockets to the new addresses and announce them (cache-flush replaces the old)."""
        aiozc, info = self._aiozc, self._info
        assert aiozc is not None and info is not None
        if not addrs:
            await aiozc.async_update_interfaces([], self._ip_version)
            self._addrs, self._senders = addrs, []
            log.info("no usable address left; %s will be re-announced when one returns", info.name)
            return
        senders = _senders(addrs, self._senders)
        # A kept address now on another interface (adapter re-plugged) must leave and re-join the
        # group, and zeroconf diffs on the address alone.
        old_index = {a.ip: a.ifindex for a in self._addrs}
        moved = {a.ip for a in addrs if a.ip in senders and old_index.get(a.ip, a.ifindex) != a.ifindex}
        if moved:
            await aiozc.async_update_interfaces([s for s in senders if s not in moved], self._ip_version)
        info.addresses = _packed(addrs)
        await aiozc.async_update_interfaces(senders, self._ip_version)
        await (await aiozc.async_update_service(info))
        self._addrs, self._senders = addrs, senders
        log.info("addresses changed; re-announced %s at %s", info.name, _describe(addrs))

    def _warn_once(self, what: str, exc: BaseException) -> None:
        """WARNING the first time a problem is seen, DEBUG after, so a dead LAN cannot fill the journal."""
        key = repr(exc)
        level = logging.DEBUG if key in self._seen_problems else logging.WARNING
        self._seen_problems.add(key)
        log.log(level, "mDNS %s failed (will retry every %gs): %s", what, self._poll_interval, exc)


def _packed(addrs: frozenset[_Addr]) -> list[bytes]:
    """Addresses in the wire form ServiceInfo wants."""
    family = {4: socket.AF_INET, 6: socket.AF_INET6}
    return [socket.inet_pton(family[a.version], a.ip) for a in sorted(addrs)]


def _describe(addrs: frozenset[_Addr]) -> str:
    """Addresses for a log line."""
    return ", ".join(f"{a.ip}%{a.ifname}" if a.link_local and a.version == 6 else a.ip for a in sorted(addrs))


# --- finding hubs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundHub:
    """A hub seen on the LAN; clients must try each address, as some may be unreachable from them."""

    name: str
    addresses: tuple[str, ...]  # most recently announced first; IPv6 link-local carries "%<ifname>"
    port: int
    properties: dict[str, str] = field(hash=False)

    def urls(self, scheme: str = "http") -> list[str]:
        """The ingest URL on each address, in the order to try them."""
        path = self.properties.get("path") or "/"
        return [f"{scheme}://{_url_host(a)}:{self.port}{path}" for a in self.addresses]


async def browsing_zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf | None:
    """A zeroconf instance on the given interfaces (names or addresses), default all but loopback.

    Loopback is left out as for advertising: it has no IPv6 multicast route, and a hub on this
    host is still heard through multicast loop on the real interfaces.
    """
    senders = _senders(await asyncio.to_thread(_scan, interfaces or ()))
    if not senders:
        log.warning("no usable address on %s; cannot browse", ", ".join(interfaces or ["any interface"]))
        return None
    return AsyncZeroconf(interfaces=senders, ip_version=_ip_version())


async def find_hubs(timeout: float = 3.0, interfaces: Sequence[str] | None = None) -> list[FoundHub]:
    """Browse for `timeout` seconds and return every hub that answered and did not say goodbye."""
    aiozc = await browsing_zeroconf(interfaces)
    if aiozc is None:
        return []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    infos: dict[str, AsyncServiceInfo] = {}
    tasks: list[asyncio.Task[bool]] = []  # kept to the end, so every outcome is collected

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            infos.pop(name, None)
        elif name not in infos:
            info = infos[name] = AsyncServiceInfo(service_type, name)
            wait_ms = max(deadline - loop.time(), 0.05) * 1000
            tasks.append(loop.create_task(info.async_request(zeroconf, wait_ms)))

    browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        await asyncio.sleep(timeout)
        found = []
        for name, info in sorted(infos.items()):
            info.load_from_cache(aiozc.zeroconf)  # the latest addresses, not those of the first answer
            addresses = tuple(_named_zone(a) for a in info.parsed_scoped_addresses())
            if info.port is None or not addresses:
                log.debug("%s did not resolve within %gs", name, timeout)
                continue
            props = {k: v or "" for k, v in info.decoded_properties.items()}
            found.append(FoundHub(name, addresses, info.port, props))
        return found
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await browser.async_cancel()
        await aiozc.async_close()
