"""TLS material loading, peer identity parsing, and mutual TLS over a real socket."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import (
    CLIENT_URI_PREFIX,
    TlsFiles,
    certificate_fingerprint,
    channel_credentials,
    load_certificates,
    load_private_key,
    peer_identity,
    read_pem,
)
from fair4free.data_owner.pki import PkiLayout, init_pki, issue_client
from fair4free.data_owner.server_tls import server_credentials
from forged_certs import DAY, forge, now, pem_of, write_pair

TIMEOUT_S = 5.0


@pytest.fixture
def pki(tmp_path: Path) -> PkiLayout:
    layout = init_pki(tmp_path / "pki")
    issue_client(layout.root, "alice")
    return layout


# --- reading PEM files -----------------------------------------------------------------------


def test_read_pem_returns_the_bytes(pki: PkiLayout) -> None:
    assert read_pem(pki.ca_cert, "CA certificate") == pki.ca_cert.read_bytes()


def test_read_pem_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        Fair4FreeError, match=r"CA certificate file .*nope\.crt does not exist"
    ) as e:
        read_pem(tmp_path / "nope.crt", "CA certificate")
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_read_pem_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(Fair4FreeError, match=r"cannot read server private key file .*: ") as e:
        read_pem(tmp_path, "server private key")
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_read_pem_garbage(tmp_path: Path) -> None:
    path = tmp_path / "ca.crt"
    path.write_bytes(b"\x00\x01 definitely not a certificate")
    with pytest.raises(Fair4FreeError, match=r"CA certificate file .*ca\.crt is not PEM") as e:
        read_pem(path, "CA certificate")
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_pem_block_that_is_not_a_certificate(tmp_path: Path) -> None:
    path = tmp_path / "ca.crt"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n")
    with pytest.raises(Fair4FreeError, match="holds no valid PEM certificate") as e:
        load_certificates(path, "CA certificate")
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_certificate_is_not_a_private_key(pki: PkiLayout) -> None:
    with pytest.raises(Fair4FreeError, match=r"server\.crt is not an unencrypted PEM private") as e:
        load_private_key(pki.server_cert, "server private key")
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_encrypted_private_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "enc.key"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(Fair4FreeError, match="is not an unencrypted PEM private key") as e:
        load_private_key(path, "client private key")
    assert e.value.code is ErrorCode.TLS_MATERIAL


# --- building credentials --------------------------------------------------------------------


def test_server_credentials_from_the_pki(pki: PkiLayout) -> None:
    files = pki.server_files()
    credentials = server_credentials(ca=files.ca, cert=files.cert, key=files.key)
    assert isinstance(credentials, grpc.ServerCredentials)


def test_server_credentials_reject_a_foreign_key(pki: PkiLayout) -> None:
    with pytest.raises(Fair4FreeError, match=r"server private key .* does not belong") as e:
        server_credentials(ca=pki.ca_cert, cert=pki.server_cert, key=pki.ca_key)
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_server_credentials_name_a_missing_ca(pki: PkiLayout, tmp_path: Path) -> None:
    with pytest.raises(Fair4FreeError, match=r"CA certificate file .*missing\.crt") as e:
        server_credentials(ca=tmp_path / "missing.crt", cert=pki.server_cert, key=pki.server_key)
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_server_credentials_cannot_disable_client_auth() -> None:
    with pytest.raises(TypeError):
        server_credentials(require_client_auth=False)  # type: ignore[call-arg]


def test_channel_credentials_need_cert_and_key_together(pki: PkiLayout) -> None:
    files = pki.client_files("alice")
    with pytest.raises(Fair4FreeError, match="must be given together") as e:
        channel_credentials(ca=files.ca, cert=files.cert, key=None)
    assert e.value.code is ErrorCode.CONFIG_INVALID
    with pytest.raises(Fair4FreeError, match="must be given together") as e:
        channel_credentials(ca=files.ca, cert=None, key=files.key)
    assert e.value.code is ErrorCode.CONFIG_INVALID


def test_channel_credentials_reject_an_expired_certificate(pki: PkiLayout, tmp_path: Path) -> None:
    cert, key = forge(
        pki,
        uris=[CLIENT_URI_PREFIX + "old"],
        not_before=now() - 10 * DAY,
        not_after=now() - DAY,
    )
    cert_path, key_path = write_pair(tmp_path / "old", cert, key)
    with pytest.raises(Fair4FreeError, match=r"client certificate .*forged\.crt expired on") as e:
        channel_credentials(ca=pki.ca_cert, cert=cert_path, key=key_path)
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_channel_credentials_reject_a_not_yet_valid_certificate(
    pki: PkiLayout, tmp_path: Path
) -> None:
    cert, key = forge(pki, uris=[CLIENT_URI_PREFIX + "new"], not_before=now() + DAY)
    cert_path, key_path = write_pair(tmp_path / "new", cert, key)
    with pytest.raises(Fair4FreeError, match="is not valid before") as e:
        channel_credentials(ca=pki.ca_cert, cert=cert_path, key=key_path)
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_tls_files_from_pki_dir(tmp_path: Path) -> None:
    files = TlsFiles.from_pki_dir(tmp_path, "lab.v2")
    assert files == TlsFiles(
        ca=tmp_path / "ca.crt",
        cert=tmp_path / "clients" / "lab.v2.crt",
        key=tmp_path / "clients" / "lab.v2.key",
    )
    with pytest.raises(Fair4FreeError, match="client name '../x' is invalid") as e:
        TlsFiles.from_pki_dir(tmp_path, "../x")
    assert e.value.code is ErrorCode.CONFIG_INVALID


# --- identity and fingerprints ---------------------------------------------------------------


def test_peer_identity_of_an_issued_client(pki: PkiLayout) -> None:
    pem = pki.client_cert("alice").read_bytes()
    assert peer_identity({"x509_pem_cert": [pem]}) == "fair4free://consumer/alice"
    # grpc-stubs declares plain bytes values; that shape works too.
    assert peer_identity({"x509_pem_cert": pem}) == "fair4free://consumer/alice"


def test_peer_identity_ignores_other_properties(pki: PkiLayout) -> None:
    context = {
        "x509_common_name": [b"mallory"],
        "peer_uri": [b"fair4free://consumer/mallory"],
        "x509_pem_cert": [pki.client_cert("alice").read_bytes()],
    }
    assert peer_identity(context) == "fair4free://consumer/alice"


@pytest.mark.parametrize(
    "values",
    [[], [b"garbage"], [b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n"]],
)
def test_peer_identity_without_a_usable_certificate(values: list[bytes]) -> None:
    assert peer_identity({"x509_pem_cert": values}) is None


def test_peer_identity_of_an_empty_context() -> None:
    assert peer_identity({}) is None


def test_peer_identity_with_two_certificates_is_none(pki: PkiLayout) -> None:
    pem = pki.client_cert("alice").read_bytes()
    assert peer_identity({"x509_pem_cert": [pem, pem]}) is None


def test_server_certificate_is_no_consumer(pki: PkiLayout) -> None:
    assert peer_identity({"x509_pem_cert": [pki.server_cert.read_bytes()]}) is None


@pytest.mark.parametrize(
    ("uris", "purposes", "expected"),
    [
        (["https://example.org/x", CLIENT_URI_PREFIX + "bob"], None, CLIENT_URI_PREFIX + "bob"),
        ([], None, None),
        (["https://example.org/x"], None, None),
        ([CLIENT_URI_PREFIX + "bob", CLIENT_URI_PREFIX + "eve"], None, None),
        ([CLIENT_URI_PREFIX + "Bob"], None, None),
        ([CLIENT_URI_PREFIX + "bob/../eve"], None, None),
        ([CLIENT_URI_PREFIX], None, None),
        (["FAIR4FREE://consumer/bob"], None, None),
        ([CLIENT_URI_PREFIX + "bob"], [ExtendedKeyUsageOID.SERVER_AUTH], None),
        ([CLIENT_URI_PREFIX + "bob"], [], None),
    ],
)
def test_peer_identity_of_odd_certificates(
    pki: PkiLayout,
    uris: list[str],
    purposes: list[x509.ObjectIdentifier] | None,
    expected: str | None,
) -> None:
    if purposes is None:
        cert, _ = forge(pki, uris=uris)
    else:
        cert, _ = forge(pki, uris=uris, purposes=purposes)
    assert peer_identity({"x509_pem_cert": [pem_of(cert)]}) == expected


def test_certificate_fingerprint(pki: PkiLayout) -> None:
    pem = pki.client_cert("alice").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    fingerprint = certificate_fingerprint(pem)
    assert fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert fingerprint == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert fingerprint != certificate_fingerprint(pki.server_cert.read_bytes())


def test_fingerprint_of_garbage() -> None:
    with pytest.raises(Fair4FreeError, match="not a PEM certificate") as e:
        certificate_fingerprint(b"garbage")
    assert e.value.code is ErrorCode.TLS_MATERIAL


# --- mutual TLS over a real socket -----------------------------------------------------------


class RecordingHealth(health.HealthServicer):
    """The standard health servicer, noting who each caller was."""

    def __init__(self) -> None:
        super().__init__()
        self.identities: list[str | None] = []

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.identities.append(peer_identity(context.auth_context()))
        return super().Check(request, context)


@dataclass
class Daemon:
    layout: PkiLayout
    port: int
    servicer: RecordingHealth = field(repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def daemon(pki: PkiLayout) -> Iterator[Daemon]:
    servicer = RecordingHealth()
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
        server = grpc.server(pool)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        files = pki.server_files()
        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(ca=files.ca, cert=files.cert, key=files.key)
        )
        server.start()
        try:
            yield Daemon(pki, port, servicer)
        finally:
            server.stop(None).wait(TIMEOUT_S)


def check(channel: grpc.Channel) -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)


def refusal(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        check(channel)
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code()


def test_issued_client_is_served_and_identified(daemon: Daemon) -> None:
    credentials = daemon.layout.client_files("alice").channel_credentials()
    with grpc.secure_channel(daemon.target, credentials) as channel:
        response = check(channel)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert daemon.servicer.identities == ["fair4free://consumer/alice"]


def test_server_is_reachable_by_host_name(daemon: Daemon) -> None:
    issue_client(daemon.layout.root, "bob")
    credentials = daemon.layout.client_files("bob").channel_credentials()
    with grpc.secure_channel(f"localhost:{daemon.port}", credentials) as channel:
        assert check(channel).status == health_pb2.HealthCheckResponse.SERVING
    assert daemon.servicer.identities == ["fair4free://consumer/bob"]


def test_client_without_certificate_is_refused(daemon: Daemon) -> None:
    credentials = channel_credentials(ca=daemon.layout.ca_cert, cert=None, key=None)
    with grpc.secure_channel(daemon.target, credentials) as channel:
        assert refusal(channel) is grpc.StatusCode.UNAVAILABLE
    assert daemon.servicer.identities == []


def test_client_of_another_ca_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    cert, key = issue_client(other.root, "alice")
    credentials = channel_credentials(ca=daemon.layout.ca_cert, cert=cert, key=key)
    with grpc.secure_channel(daemon.target, credentials) as channel:
        assert refusal(channel) is grpc.StatusCode.UNAVAILABLE
    assert daemon.servicer.identities == []


def test_plaintext_client_is_refused(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.target) as channel:
        assert refusal(channel) is grpc.StatusCode.UNAVAILABLE
    assert daemon.servicer.identities == []


def test_client_trusting_another_ca_refuses_the_server(daemon: Daemon, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    files = daemon.layout.client_files("alice")
    credentials = channel_credentials(ca=other.ca_cert, cert=files.cert, key=files.key)
    with grpc.secure_channel(daemon.target, credentials) as channel:
        assert refusal(channel) is grpc.StatusCode.UNAVAILABLE
    assert daemon.servicer.identities == []


def test_server_certificate_cannot_act_as_a_client(daemon: Daemon) -> None:
    layout = daemon.layout
    credentials = channel_credentials(
        ca=layout.ca_cert, cert=layout.server_cert, key=layout.server_key
    )
    with grpc.secure_channel(daemon.target, credentials) as channel:
        assert refusal(channel) is grpc.StatusCode.UNAVAILABLE
    assert daemon.servicer.identities == []


def test_client_certificate_without_identity_is_served_but_anonymous(
    daemon: Daemon, tmp_path: Path
) -> None:
    """The handshake trusts any client certificate of the CA; the identity check is the caller's."""
    cert, key = forge(daemon.layout, uris=["https://example.org/not-a-consumer"])
    cert_path, key_path = write_pair(tmp_path / "anon", cert, key)
    credentials = channel_credentials(ca=daemon.layout.ca_cert, cert=cert_path, key=key_path)
    with grpc.secure_channel(daemon.target, credentials) as channel:
        assert check(channel).status == health_pb2.HealthCheckResponse.SERVING
    assert daemon.servicer.identities == [None]
