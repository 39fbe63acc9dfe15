"""The SSRF guard, against a real HTTP server on 127.0.0.1 (allowed only where a test says so)."""

import ipaddress
import json
import time
import tracemalloc

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.handlers import net
from apps.handlers.errors import PermanentError
from tests.support.http import body_of, encoded


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.100.100.200",  # shared address space (another cloud's metadata)
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "fec0::1",  # site-local (deprecated, still routed inside some networks)
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 around 169.254.169.254
        "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    ],
)
def test_addresses_that_are_not_public(address):
    assert not net.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses(address):
    assert net.is_public(ipaddress.ip_address(address))


def test_the_allow_list_opens_exactly_its_networks(settings):
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.0/8", "10.5.0.0/16"]
    allowed = [net.address_allowed(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.5.9.9")]
    refused = [net.address_allowed(ipaddress.ip_address(a)) for a in ("10.6.0.1", "::1")]
    assert allowed == [True, True]
    assert refused == [False, False]


def test_an_invalid_allow_list_is_a_configuration_error(settings):
    settings.SSRF_ALLOWED_NETWORKS = ["not-a-network"]
    with pytest.raises(ImproperlyConfigured, match="not-a-network"):
        net.allowed_networks()


def fetch(url: str, **kwargs):
    with net.guarded_request("GET", url, timeout=5, **kwargs) as guarded:
        body = b"".join(net.read_body(guarded, max_bytes=10**6))
        return guarded, body


def test_loopback_is_refused_without_the_allow_list_and_nothing_is_sent(web, settings):
    settings.SSRF_ALLOWED_NETWORKS = []
    for url in (
        web.url("/bytes/10"),
        f"http://localhost:{web.port}/bytes/10",
        f"http://2130706433:{web.port}/bytes/10",  # 127.0.0.1 as one decimal number
        f"http://[::ffff:127.0.0.1]:{web.port}/bytes/10",
    ):
        with pytest.raises(net.BlockedAddress, match="not a public address"):
            fetch(url)
    assert web.hits["/bytes/10"] == 0


def test_an_allowed_request_reaches_the_server(web):
    guarded, body = fetch(web.url("/bytes/10"))
    assert guarded.response.status_code == 200
    assert body == b"taskflow-d"
    assert guarded.redirects == []


def test_the_connection_goes_to_the_vetted_address_under_the_original_host_name(web, settings):
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
    guarded, body = fetch(f"http://localhost:{web.port}/echo")
    assert str(guarded.response.request.url.host) in {"127.0.0.1", "::1"}
    echoed = json.loads(body)
    assert echoed["headers"]["Host"] == f"localhost:{web.port}"


def test_every_redirect_is_vetted_again(web):
    with pytest.raises(net.BlockedAddress, match=r"169\.254\.169\.254"):
        fetch(web.url("/redirect?to=http://169.254.169.254/latest/meta-data/"))
    with pytest.raises(net.BlockedAddress):
        fetch(web.url("/redirect?to=http://10.0.0.1/admin"))


def test_redirects_are_followed_and_recorded(web):
    first = web.url("/redirect?to=/redirect%3Fto%3D/bytes/5")
    guarded, body = fetch(first)
    assert body == b"taskf"
    assert guarded.url == web.url("/bytes/5")
    assert guarded.redirects == [first, web.url("/redirect?to=/bytes/5")]


def test_a_redirect_loop_stops(web):
    with pytest.raises(net.TooManyRedirects):
        fetch(web.url("/loop"))
    assert web.hits["/loop"] == net.MAX_REDIRECTS + 1


def test_credentials_do_not_follow_a_redirect_to_another_origin(web, settings):
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
    other_origin = f"http://localhost:{web.port}/echo"
    _, body = fetch(
        web.url(f"/redirect?to={other_origin}"),
        headers={"Authorization": "Bearer secret", "X-Trace": "kept"},
    )
    headers = json.loads(body)["headers"]
    assert "Authorization" not in headers
    assert headers["X-Trace"] == "kept"


def test_other_schemes_are_refused():
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "ftp://example.com/x"):
        with pytest.raises(net.InvalidUrl):
            fetch(url)


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1"])
def test_a_port_out_of_range_is_refused(port):
    with pytest.raises(net.InvalidUrl, match=f"port {port}, out of range: a port is 1 to 65535"):
        net.parse_url(f"http://example.com:{port}/")


@pytest.mark.parametrize("port", [1, 8080, 65535])
def test_a_port_in_range_is_kept(port):
    assert net.parse_url(f"http://example.com:{port}/").port == port


def test_a_port_past_65535_is_not_fetched_from_that_port_modulo_65536(web):
    # getaddrinfo() wraps the port: 65536 + p reached the server on p.
    with pytest.raises(net.InvalidUrl, match="out of range"):
        fetch(f"http://127.0.0.1:{web.port + 65536}/bytes/10")
    with pytest.raises(net.InvalidUrl, match=r"redirected to an unusable URL.*out of range"):
        fetch(web.url(f"/redirect?to=http://127.0.0.1:{web.port + 65536}/bytes/10"))
    assert web.hits["/bytes/10"] == 0


def test_a_body_past_the_limit_stops(web):
    with (
        net.guarded_request("GET", web.url("/endless"), timeout=5) as guarded,
        pytest.raises(net.BodyTooLarge),
    ):
        for _ in net.read_body(guarded, max_bytes=200_000):
            pass


def test_a_refused_connection_is_a_network_error(settings):
    from tests.support.processes import free_port

    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with pytest.raises(net.NetworkError):
        fetch(f"http://127.0.0.1:{free_port()}/")


def test_a_refused_name_is_named_without_the_address_it_resolves_to(web, settings):
    # What an internal name resolves to is not the user's to learn (the log has it).
    settings.SSRF_ALLOWED_NETWORKS = []
    with pytest.raises(net.BlockedAddress, match="not a public address") as refused:
        fetch(f"http://localhost:{web.port}/bytes/10")
    assert "localhost" in str(refused.value)
    assert "127.0.0.1" not in str(refused.value)


def test_gzip_is_asked_for(web):
    _, body = fetch(web.url("/echo"))
    assert json.loads(body)["headers"]["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_a_compressed_body_is_read_inflated(web, encoding):
    guarded, body = fetch(web.url(f"/encoded/{encoding}/300000"))
    assert guarded.response.headers["content-encoding"] in {"gzip", "deflate"}
    assert body == body_of(300_000)


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        ("gzip,gzip", "Content-Encoding 'gzip, gzip' is not supported"),
        ("br", "Content-Encoding 'br' is not supported"),
        ("corrupt-gzip", "the compressed body is corrupt"),
    ],
)
def test_a_body_that_cannot_be_inflated_is_a_permanent_error(web, encoding, message):
    with pytest.raises(net.UnreadableBody, match=message):
        fetch(web.url(f"/encoded/{encoding}/300000"))
    assert issubclass(net.UnreadableBody, PermanentError)


def test_the_limit_holds_while_a_compressed_body_is_inflated(web):
    # 64 MiB that compress to ~200 kB: httpx inflated a whole network chunk before a limit could
    # look at it, so a small answer could fill a worker's memory (two layers: gigabytes).
    limit = 1024 * 1024
    encoded("gzip", 64 * limit)  # made now, so that only the client's memory is measured
    tracemalloc.start()
    try:
        with (
            net.guarded_request("GET", web.url(f"/encoded/gzip/{64 * limit}"), timeout=30) as got,
            pytest.raises(net.BodyTooLarge, match="passed the limit"),
        ):
            for _ in net.read_body(got, max_bytes=limit):
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * limit, f"{peak / limit:.0f} MiB held to keep to a 1 MiB limit"


def test_the_deadline_holds_while_a_compressed_body_inflates_to_nothing(web):
    # A gzip header whose file name never ends: bytes keep coming, none inflate to output.
    with (
        net.guarded_request("GET", web.url("/gzip-trickle"), timeout=5) as got,
        pytest.raises(net.DeadlineExceeded),
    ):
        for _ in net.read_body(got, max_bytes=10**6, deadline=time.monotonic() + 1):
            pass
