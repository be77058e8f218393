"""TLS on both sides of a real gateway process.

Client-facing: ``--tls-cert/--tls-key`` make the listener speak https with a
certificate the test issues from its own CA. Upstream: a recording upstream
served over https with a certificate from another CA; the gateway verifies it
against ``--upstream-ca`` and refuses (502, recorded, never a success) an
upstream it cannot verify.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from capture.devidp import mint_token
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.upstream import RecordingUpstream, recording_upstream

POLICY = """\
version: 1
rules:
  - id: read
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read]
    collections: ["*"]
"""
PATH = "/collections/docs/points/query"
QUERY = {"query": [0.1, 0.2], "limit": 3}


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def issue(
    directory: Path, name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ("127.0.0.1",)
) -> Pki:
    """A CA of its own and a server certificate it signs for ``dns``/``ips``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"embedguard test CA {name}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Pki(directory / "ca.pem", directory / f"{name}.pem", directory / f"{name}-key.pem")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out.key.chmod(0o600)
    return out


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pki]:
    tmp = tmp_path_factory.mktemp("pki")
    return {
        "gateway": issue(tmp / "gateway", "gateway", dns=("localhost",)),
        "upstream": issue(tmp / "upstream", "upstream"),
    }


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def reader(dev_idp: str) -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(dev_idp, 'rita', ['Vector-Read'])}"}


@pytest.fixture
def https_upstream(pki: dict[str, Pki]) -> Iterator[RecordingUpstream]:
    with recording_upstream(tls=(pki["upstream"].cert, pki["upstream"].key)) as up:
        yield up


def _https(gw: GatewayProcess, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{gw.port}"


def test_client_facing_tls(
    tmp_path: Path, dev_idp: str, pki: dict[str, Pki], policy: Path, reader: dict[str, str]
) -> None:
    g = pki["gateway"]
    with (
        recording_upstream() as up,
        gateway_process(
            tmp_path,
            upstream=up.url,
            kind="qdrant",
            policy=policy,
            issuer=dev_idp,
            extra_args=["--tls-cert", str(g.cert), "--tls-key", str(g.key)],
        ) as gw,
    ):
        with httpx.Client(verify=trusting(g.ca), timeout=30) as client:
            for host in ("127.0.0.1", "localhost"):
                r = client.post(f"{_https(gw, host)}{PATH}", json=QUERY, headers=reader)
                assert r.status_code == 200, r.text
                assert r.headers["x-embedguard-request-id"]
        # a client that does not trust the gateway's CA does not get through
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{_https(gw)}{PATH}", json=QUERY, headers=reader, timeout=30)
        assert len(up.requests) == 2
        assert all(r.headers["api-key"] == UPSTREAM_SECRET for r in up.requests)
        received = [
            e.event for e in read_events(gw.log_url) if e.event.avro_name == "RequestReceived"
        ]
        assert len(received) == 2
        # recorded as the client sent it, not as forwarded (plain http upstream)
        assert [(x.scheme, x.host) for x in received] == [
            ("https", f"127.0.0.1:{gw.port}"),
            ("https", f"localhost:{gw.port}"),
        ]
        assert g.key.read_bytes() not in gw.stderr().encode()


def test_plain_http_on_a_tls_listener_is_refused(
    tmp_path: Path, dev_idp: str, pki: dict[str, Pki], policy: Path, reader: dict[str, str]
) -> None:
    g = pki["gateway"]
    with (
        recording_upstream() as up,
        gateway_process(
            tmp_path,
            upstream=up.url,
            kind="qdrant",
            policy=policy,
            issuer=dev_idp,
            extra_args=["--tls-cert", str(g.cert), "--tls-key", str(g.key)],
        ) as gw,
    ):
        r = httpx.post(f"{gw.url}{PATH}", json=QUERY, headers=reader, timeout=30)
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "tls_required" and "https://" in r.json()["reason"]
        assert up.requests == []
        evs = [e.event for e in read_events(gw.log_url)]
        blocked = [e for e in evs if e.avro_name == "RequestBlocked"]
        assert len(blocked) == 1 and blocked[0].error == "tls_required"
        assert not [e for e in evs if e.avro_name == "RequestForwarded"]


def test_upstream_tls_verified_with_upstream_ca(
    tmp_path: Path,
    dev_idp: str,
    pki: dict[str, Pki],
    policy: Path,
    reader: dict[str, str],
    https_upstream: RecordingUpstream,
) -> None:
    assert https_upstream.url.startswith("https://")
    with gateway_process(
        tmp_path,
        upstream=https_upstream.url,
        kind="qdrant",
        policy=policy,
        issuer=dev_idp,
        extra_args=["--upstream-ca", str(pki["upstream"].ca)],
    ) as gw:
        r = httpx.post(f"{gw.url}{PATH}", json=QUERY, headers=reader, timeout=30)
        assert r.status_code == 200, (r.text, gw.stderr()[-2000:])
        assert len(https_upstream.requests) == 1
        assert https_upstream.requests[0].headers["api-key"] == UPSTREAM_SECRET
        assert "authorization" not in https_upstream.requests[0].headers
        recorded = [
            e.event for e in read_events(gw.log_url) if e.event.avro_name == "ResponseRecorded"
        ]
        assert [(x.status, x.upstream_error) for x in recorded] == [(200, None)]
        assert recorded[0].result_ids == ["1"]


def test_tls_on_both_sides(
    tmp_path: Path,
    dev_idp: str,
    pki: dict[str, Pki],
    policy: Path,
    reader: dict[str, str],
    https_upstream: RecordingUpstream,
) -> None:
    """The upstream's certificate is checked against the upstream's name, never
    against the name the client used to reach the gateway (its TLS SNI)."""
    g = pki["gateway"]
    with (
        gateway_process(
            tmp_path,
            upstream=https_upstream.url,
            kind="qdrant",
            policy=policy,
            issuer=dev_idp,
            extra_args=[
                "--tls-cert",
                str(g.cert),
                "--tls-key",
                str(g.key),
                "--upstream-ca",
                str(pki["upstream"].ca),
            ],
        ) as gw,
        httpx.Client(verify=trusting(g.ca), timeout=30) as client,
    ):
        for host in ("127.0.0.1", "localhost"):  # "localhost" arrives as SNI
            r = client.post(f"{_https(gw, host)}{PATH}", json=QUERY, headers=reader)
            assert r.status_code == 200, (host, r.text, gw.stderr()[-2000:])
        assert len(https_upstream.requests) == 2


def test_untrusted_upstream_is_a_recorded_failure(
    tmp_path: Path,
    dev_idp: str,
    policy: Path,
    reader: dict[str, str],
    https_upstream: RecordingUpstream,
) -> None:
    with gateway_process(
        tmp_path, upstream=https_upstream.url, kind="qdrant", policy=policy, issuer=dev_idp
    ) as gw:
        r = httpx.post(f"{gw.url}{PATH}", json=QUERY, headers=reader, timeout=30)
        assert r.status_code == 502, r.text
        assert UPSTREAM_SECRET not in r.text
        # the handshake failed: the upstream never saw the request (nor the key)
        assert https_upstream.requests == []
        evs = [e.event for e in read_events(gw.log_url)]
        recorded = [e for e in evs if e.avro_name == "ResponseRecorded"]
        assert len(recorded) == 1, [e.avro_name for e in evs]
        assert recorded[0].status == 502
        assert recorded[0].upstream_error and "certificate" in recorded[0].upstream_error.lower()
        received = [e for e in evs if e.avro_name == "RequestReceived"]
        assert recorded[0].envelope.request_id == received[0].envelope.request_id
        assert UPSTREAM_SECRET not in gw.stderr()


def _h2(port: int, ca: Path, headers: list[tuple[bytes, bytes]],
        body: bytes = b"") -> tuple[int | None, bytes]:
    """One raw HTTP/2 request with headers no well-behaved client would send
    (the h2 library's own checks off): (status, body)."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    ctx = trusting(ca)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False,
            normalize_outbound_headers=False, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=not body)
        if body:
            conn.send_data(1, body, end_stream=True)
        s.sendall(conn.data_to_send())
        status, data = None, b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return status, data
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    return status, data
            s.sendall(conn.data_to_send())


def test_http2_requests_cannot_smuggle_a_second_request_upstream(
    tmp_path: Path, dev_idp: str, pki: dict[str, Pki], policy: Path, reader: dict[str, str]
) -> None:
    """Regression: HTTP/2 requests are forwarded upstream as HTTP/1.1. A CR/LF
    in the :path's query or in a header value, a Transfer-Encoding, or a body
    sent without content-length made the upstream read a second request that
    was never classified or recorded, with the gateway's own upstream key."""
    import json

    g = pki["gateway"]
    body = json.dumps(QUERY).encode()
    smuggled = (b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                b"POST /collections/secret/points/delete HTTP/1.1\r\nX-Pad: y")

    def headers(path: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        return [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"localhost"),
                (b":path", path), (b"authorization", reader["authorization"].encode()),
                (b"content-type", b"application/json"), *extra]

    with (
        recording_upstream() as up,
        gateway_process(tmp_path, upstream=up.url, kind="qdrant", policy=policy,
                        issuer=dev_idp,
                        extra_args=["--tls-cert", str(g.cert), "--tls-key", str(g.key)]) as gw,
    ):
        length = (b"content-length", str(len(body)).encode())
        refused = {
            "crlf in the query": headers(PATH.encode() + b"?a=b" + smuggled, length),
            "crlf in a header": headers(PATH.encode(), length, (b"x-pad", b"x\r\n" + smuggled)),
            "transfer-encoding": headers(PATH.encode(), (b"transfer-encoding", b"chunked")),
        }
        for case, h in refused.items():
            status, data = _h2(gw.port, g.ca, h, body)
            if status is None:  # the HTTP/2 layer reset the stream itself
                assert case == "transfer-encoding", case
                continue
            assert status == 400, (case, status, data[:300])
            assert json.loads(data)["error"] == "bad_request", case
        assert up.requests == []
        # a body without content-length goes upstream with its length, as one request
        status, data = _h2(gw.port, g.ca, headers(PATH.encode()), body)
        assert status == 200, data[:300]
        assert [(r.path, r.body) for r in up.requests] == [(PATH, body)]
        assert up.requests[0].headers["content-length"] == str(len(body))
