"""Outgoing HTTP for handlers (download_files, fetch_url, webhook types), guarded against SSRF.

A user names a URL; we must not let it reach the cluster's private side (the metadata service at
169.254.169.254, the database, an admin port on localhost). For every request and every redirect:

1. The URL must be http(s) with a host.
2. The host is resolved here, and *every* address it resolves to must be public (not private,
   loopback, link-local, multicast, reserved, unspecified or shared, nor such an address embedded
   in IPv6: mapped, 6to4, Teredo, NAT64), unless it is in the SSRF_ALLOWED_NETWORKS setting.
3. The connection goes to the vetted address itself (the Host header and TLS SNI and certificate
   check keep the name), so a second DNS answer cannot swap in another address (DNS rebinding).
4. Redirects are followed here, one hop at a time, each hop vetted again (at most MAX_REDIRECTS).
5. A compressed body (gzip or deflate, one layer) is inflated here, a bounded piece at a time,
   so that a size limit holds for what is produced (httpx inflates a whole network chunk at once
   and stacks a decoder per listed encoding: a 1 KiB answer marked "gzip, gzip" became 256 MiB).

Proxies from the environment are ignored (a proxy would connect on our behalf, unchecked).
"""

import ipaddress
import logging
import socket
import ssl
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import certifi
import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.handlers.errors import PermanentError, RetryableError

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Dropped when a redirect leaves the origin they were meant for.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
USER_AGENT = "TaskFlow/1.0"
CHUNK_SIZE = 64 * 1024
# What read_body can inflate; asked for unless the caller's headers say otherwise.
ACCEPT_ENCODING = "gzip, deflate"
_ZLIB_WBITS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(PermanentError):
    """The URL leads to an address the SSRF guard refuses."""


class InvalidUrl(PermanentError):
    """Not an http(s) URL with a host."""


class TooManyRedirects(PermanentError):
    pass


class BodyTooLarge(PermanentError):
    pass


class UnreadableBody(PermanentError):
    """An encoding read_body does not decode, or a compressed body that is corrupt."""


class NetworkError(RetryableError):
    """Connection refused or reset, a timeout, a DNS failure that may pass."""


class DeadlineExceeded(NetworkError):
    pass


@lru_cache(maxsize=8)
def _parse_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"SSRF_ALLOWED_NETWORKS: {entry!r} is not a network (e.g. 10.1.0.0/16)"
            ) from exc
    return tuple(networks)


def allowed_networks() -> tuple[IPNetwork, ...]:
    return _parse_networks(tuple(e for e in settings.SSRF_ALLOWED_NETWORKS if e.strip()))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    embedded = []
    if ip.ipv4_mapped is not None:
        embedded.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.extend(ip.teredo)
    if ip in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return embedded


def is_public(ip: IPAddress) -> bool:
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if ip.is_private or ip.is_loopback or ip.is_link_local:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # Site-local (fec0::/10) is deprecated, not gone: networks still route it internally,
        # and Python counts it global.
        if ip.is_site_local:
            return False
        return all(is_public(inner) for inner in _embedded_ipv4(ip))
    return True


def address_allowed(ip: IPAddress) -> bool:
    """Public, or inside a network the settings allow."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    networks = allowed_networks()
    if any(candidate in network for candidate in candidates for network in networks):
        return True
    return is_public(ip)


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without DNS, or None for a name: the usual forms, and the ones
    inet_aton (and so getaddrinfo, at the request) also reads as IPv4: 2130706433, 0x7f.1,
    0177.0.0.1, 127.1. For a check at input time; the request itself is vetted again."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(char in "0123456789abcdefx." for char in host.lower()):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in {socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None)}:
            raise NetworkError(f"Could not resolve {host} (for now): {exc.strerror}") from exc
        raise InvalidUrl(f"Could not resolve {host}: {exc.strerror}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def parse_url(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        # httpx decodes an IDNA host lazily: a malformed A-label ("xn--") raises here, not above.
        parsed.host  # noqa: B018
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidUrl(f"Not a valid URL: {url!r}: {exc}") from exc
    if parsed.scheme not in {"http", "https"}:
        raise InvalidUrl(f"Only http and https URLs are allowed, not {parsed.scheme or 'none'}.")
    if not parsed.host:
        raise InvalidUrl(f"The URL {str(parsed)!r} has no host.")
    # httpx keeps any number as the port, and getaddrinfo() takes it modulo 65536: a URL with
    # port 99999 would be fetched from port 34463.
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise InvalidUrl(
            f"The URL {str(parsed)!r} has port {parsed.port}, out of range: a port is 1 to 65535."
        )
    return parsed


def vet(url: httpx.URL) -> IPAddress:
    """The address to connect to for `url`, or BlockedAddress."""
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = resolve(url.host, port)
    if not addresses:
        raise InvalidUrl(f"{url.host} resolves to no address.")
    for ip in addresses:
        if not address_allowed(ip):
            # The user sees the name only: the address an internal name resolves to is the
            # cluster's to know (the operator finds it in the log).
            logger.warning("SSRF guard: %s resolves to %s, which is not allowed", url.host, ip)
            raise BlockedAddress(
                f"Refused to connect to {url.host}: not a public address "
                "(SSRF guard; an operator can allow networks with SSRF_ALLOWED_NETWORKS)."
            )
    return addresses[0]


@dataclass
class GuardedResponse:
    response: httpx.Response
    url: str  # the final URL, after redirects
    redirects: list[str] = field(default_factory=list)  # the URLs that redirected, in order
    started: float = 0.0  # time.monotonic() when the first request was sent


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _is_redirect(response: httpx.Response) -> bool:
    return response.status_code in REDIRECT_STATUSES and "location" in response.headers


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Made once per process: loading the CA bundle costs a few hundred milliseconds."""
    return ssl.create_default_context(cafile=certifi.where())


@contextmanager
def guarded_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    timeout: float,
    max_redirects: int = MAX_REDIRECTS,
) -> Iterator[GuardedResponse]:
    """Send `method url` (with the body `content`, if any) through the SSRF guard; yields the
    final response, body unread.

    `timeout` bounds each connect and each read; the caller bounds the whole body with
    `read_body(..., deadline=...)`. A redirect that turns the request into a GET drops the body.
    """
    current = parse_url(url)
    request_headers = {
        "User-Agent": USER_AGENT,
        "Accept-Encoding": ACCEPT_ENCODING,
        **(headers or {}),
    }
    redirects: list[str] = []
    with httpx.Client(
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        verify=_tls_context(),
    ) as client:
        started = time.monotonic()
        for _hop in range(max_redirects + 1):
            response = _send(client, method, current, request_headers, content)
            if not _is_redirect(response):
                try:
                    yield GuardedResponse(response, str(current), redirects, started)
                finally:
                    response.close()
                return
            response.close()
            try:
                target = parse_url(current.join(response.headers["location"]))
            except InvalidUrl as exc:
                raise InvalidUrl(f"{current} redirected to an unusable URL: {exc}") from exc
            redirects.append(str(current))
            if (response.status_code == 303 and method != "HEAD") or (
                response.status_code in {301, 302} and method == "POST"
            ):
                method = "GET"  # what browsers do
                content = None
            if _origin(target) != _origin(current):
                request_headers = {
                    name: value
                    for name, value in request_headers.items()
                    if name.lower() not in CREDENTIAL_HEADERS
                }
            current = target
    raise TooManyRedirects(f"More than {max_redirects} redirects, starting at {url}.")


def _send(
    client: httpx.Client,
    method: str,
    url: httpx.URL,
    headers: dict[str, str],
    content: bytes | None = None,
) -> httpx.Response:
    ip = vet(url)
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    host_header = url.netloc.decode("ascii")
    request = client.build_request(
        method,
        url.copy_with(host=str(ip)),
        headers={**headers, "Host": host_header},
        content=content,
        extensions=extensions,
    )
    try:
        return client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise NetworkError(f"{url.host}: timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise NetworkError(f"{url.host}: {type(exc).__name__}: {exc}") from exc


def read_body(
    guarded: GuardedResponse, *, max_bytes: int, deadline: float | None = None
) -> Iterator[bytes]:
    """The response body (inflated if it came compressed) in chunks; BodyTooLarge once more than
    `max_bytes` were produced, DeadlineExceeded past `deadline` (a time.monotonic() value), so
    that neither a slow trickle nor a small compressed answer can hold a worker."""
    response = guarded.response
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(
            f"{guarded.url}: the response is {int(declared)} bytes, over the limit of {max_bytes}."
        )
    inflater = _inflater_for(guarded)
    received = 0

    def in_time() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded(f"{guarded.url}: the download took too long.")

    def checked(chunk: bytes) -> bytes:
        nonlocal received
        received += len(chunk)
        if received > max_bytes:
            raise BodyTooLarge(
                f"{guarded.url}: the response passed the limit of {max_bytes} bytes."
            )
        in_time()
        return chunk

    try:
        for raw in response.iter_raw():  # as they arrive (a chunk size would wait to fill it)
            # For every chunk received, not only those that inflate to something: a compressed
            # stream can trickle in bytes that produce nothing (an endless gzip file name).
            in_time()
            if inflater is None:
                yield checked(raw)
                continue
            for chunk in inflater.feed(raw):
                yield checked(chunk)
            if inflater.finished:
                break  # what follows a gzip member is not part of the body
        if inflater is not None:
            for chunk in inflater.flush():
                yield checked(chunk)
    except httpx.TimeoutException as exc:
        raise NetworkError(f"{guarded.url}: timed out while reading the body") from exc
    except httpx.TransportError as exc:
        raise NetworkError(f"{guarded.url}: {type(exc).__name__} while reading: {exc}") from exc


def _inflater_for(guarded: GuardedResponse) -> "_Inflater | None":
    header = guarded.response.headers.get("content-encoding", "")
    encodings = [part.strip().lower() for part in header.split(",")]
    encodings = [name for name in encodings if name and name != "identity"]
    if not encodings:
        return None
    if len(encodings) > 1 or encodings[0] not in _ZLIB_WBITS:
        raise UnreadableBody(
            f"{guarded.url}: the response's Content-Encoding {header!r} is not supported "
            "(one layer of gzip or deflate is)."
        )
    return _Inflater(encodings[0], guarded.url)


class _Inflater:
    """gzip or deflate, inflated at most CHUNK_SIZE bytes at a time."""

    def __init__(self, encoding: str, url: str) -> None:
        self._url = url
        self._zlib = zlib.decompressobj(_ZLIB_WBITS[encoding])
        # "deflate" is meant to be zlib-wrapped, but some servers send it raw (as httpx allows).
        self._may_be_raw = encoding == "deflate"

    @property
    def finished(self) -> bool:
        return self._zlib.eof

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data and not self._zlib.eof:
            try:
                produced = self._zlib.decompress(data, CHUNK_SIZE)
            except zlib.error as exc:
                if self._may_be_raw:
                    self._may_be_raw = False
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise UnreadableBody(
                    f"{self._url}: the compressed body is corrupt ({exc})."
                ) from exc
            self._may_be_raw = False
            data = self._zlib.unconsumed_tail
            if produced:
                yield produced

    def flush(self) -> Iterator[bytes]:
        # What inflate still holds once the input is consumed: less than a window's worth.
        try:
            rest = self._zlib.flush()
        except zlib.error as exc:
            raise UnreadableBody(f"{self._url}: the compressed body is corrupt ({exc}).") from exc
        if rest:
            yield rest
