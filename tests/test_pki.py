"""The development PKI: what each certificate says, where files go, and what is refused."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import TlsFiles, key_matches
from fair4free.data_owner.pki import PkiLayout, client_identity_uri, init_pki, issue_client


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture
def pki(tmp_path: Path) -> PkiLayout:
    return init_pki(tmp_path / "pki")


@pytest.fixture
def umask_wide_open() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def assert_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    cert.verify_directly_issued_by(ca)
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def assert_own_ski(cert: x509.Certificate) -> None:
    ski = ext(cert, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def assert_lifetime(cert: x509.Certificate, days: int, *, ends_by: datetime.datetime) -> None:
    assert cert.not_valid_before_utc <= now() < cert.not_valid_after_utc
    assert cert.not_valid_after_utc <= ends_by
    assert cert.not_valid_after_utc <= now() + datetime.timedelta(days=days)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < datetime.timedelta(days=days + 1)


def leaf_key_usage_ok(cert: x509.Certificate) -> None:
    key_usage = ext(cert, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature
    assert not key_usage.value.key_cert_sign
    assert not key_usage.value.crl_sign
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=False, path_length=None)


def test_layout_names_the_files(tmp_path: Path) -> None:
    layout = PkiLayout(tmp_path)
    assert layout.ca_key == tmp_path / "ca.key"
    assert layout.ca_cert == tmp_path / "ca.crt"
    assert layout.server_key == tmp_path / "server.key"
    assert layout.server_cert == tmp_path / "server.crt"
    assert layout.crl == tmp_path / "crl.pem"
    assert layout.index == tmp_path / "index.json"
    assert layout.client_cert("alice") == tmp_path / "clients" / "alice.crt"
    assert layout.client_key("lab.v2") == tmp_path / "clients" / "lab.v2.key"
    assert layout.server_files() == TlsFiles(
        ca=layout.ca_cert, cert=layout.server_cert, key=layout.server_key
    )


def test_init_returns_layout_with_all_files(tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "a" / "b")
    assert layout == PkiLayout(tmp_path / "a" / "b")
    for path in (layout.ca_key, layout.ca_cert, layout.server_key, layout.server_cert):
        assert path.is_file()
    # A fresh PKI is servable at once: its first revocation list is published, and empty.
    assert layout.crl.is_file()
    assert layout.index.is_file()
    assert list(x509.load_pem_x509_crl(layout.crl.read_bytes())) == []


def test_ca_certificate(pki: PkiLayout) -> None:
    ca = load_cert(pki.ca_cert)
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    assert_own_ski(ca)
    constraints = ext(ca, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    key_usage = ext(ca, x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.key_cert_sign
    assert key_usage.value.crl_sign
    assert not key_usage.value.digital_signature
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert_lifetime(ca, 365, ends_by=now() + datetime.timedelta(days=365))


def test_each_pki_gets_a_distinct_ca(tmp_path: Path) -> None:
    first = load_cert(init_pki(tmp_path / "one").ca_cert)
    second = load_cert(init_pki(tmp_path / "two").ca_cert)
    assert first.subject != second.subject
    assert first.serial_number != second.serial_number


def test_server_certificate(pki: PkiLayout) -> None:
    ca, server = load_cert(pki.ca_cert), load_cert(pki.server_cert)
    assert_issued_by(server, ca)
    assert_own_ski(server)
    leaf_key_usage_ok(server)
    san = ext(server, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []
    eku = ext(server, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert_lifetime(server, 365, ends_by=ca.not_valid_after_utc)


def test_server_names_every_given_address(tmp_path: Path) -> None:
    layout = init_pki(
        tmp_path, hostnames=("owner.example.org", "LOCALHOST"), ip_addresses=("10.1.2.3", "::1")
    )
    san = ext(load_cert(layout.server_cert), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["owner.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    ]


def test_client_certificate(pki: PkiLayout) -> None:
    cert_path, key_path = issue_client(pki.root, "alice")
    assert (cert_path, key_path) == (pki.client_cert("alice"), pki.client_key("alice"))
    ca, client = load_cert(pki.ca_cert), load_cert(cert_path)
    assert_issued_by(client, ca)
    assert_own_ski(client)
    leaf_key_usage_ok(client)
    san = ext(client, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("fair4free://consumer/alice")]
    eku = ext(client, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert_lifetime(client, 90, ends_by=ca.not_valid_after_utc)
    assert client.serial_number != ca.serial_number


def test_client_never_outlives_ca(tmp_path: Path) -> None:
    layout = init_pki(tmp_path, days=10)
    cert_path, _ = issue_client(tmp_path, "bob", days=90)
    ca, client = load_cert(layout.ca_cert), load_cert(cert_path)
    assert client.not_valid_after_utc <= ca.not_valid_after_utc
    assert client.not_valid_after_utc <= now() + datetime.timedelta(days=10)


def test_keys_belong_to_their_certificates(pki: PkiLayout) -> None:
    cert_path, key_path = issue_client(pki.root, "carol")
    for cert, key in [
        (pki.ca_cert, pki.ca_key),
        (pki.server_cert, pki.server_key),
        (cert_path, key_path),
    ]:
        private_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        assert key_matches(load_cert(cert), private_key)


def test_serials_are_random_and_distinct(pki: PkiLayout) -> None:
    paths = [pki.ca_cert, pki.server_cert] + [issue_client(pki.root, f"c{i}")[0] for i in range(4)]
    serials = {load_cert(path).serial_number for path in paths}
    assert len(serials) == len(paths)
    assert all(serial.bit_length() > 64 for serial in serials)


@pytest.mark.usefixtures("umask_wide_open")
def test_file_modes_do_not_depend_on_umask(tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "pki")
    cert_path, key_path = issue_client(layout.root, "dave")
    for key in (layout.ca_key, layout.server_key, key_path):
        assert mode(key) == 0o600
    for cert in (layout.ca_cert, layout.server_cert, cert_path):
        assert mode(cert) == 0o644
    assert mode(layout.root) == 0o700
    assert mode(layout.clients_dir) == 0o700


def test_certificates_stay_readable_under_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        layout = init_pki(tmp_path / "pki")
        cert_path, key_path = issue_client(layout.root, "erin")
    finally:
        os.umask(old)
    assert mode(layout.ca_cert) == mode(layout.server_cert) == mode(cert_path) == 0o644
    assert mode(layout.ca_key) == mode(key_path) == 0o600


def test_init_refuses_existing_pki(pki: PkiLayout) -> None:
    before = {path: path.read_bytes() for path in (pki.ca_key, pki.ca_cert, pki.server_key)}
    with pytest.raises(Fair4FreeError, match=r"a PKI already exists in .*pki") as caught:
        init_pki(pki.root)
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert {path: path.read_bytes() for path in before} == before


def test_init_refuses_when_only_the_ca_certificate_exists(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(b"placeholder")
    with pytest.raises(Fair4FreeError, match="a PKI already exists") as caught:
        init_pki(tmp_path)
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert not (tmp_path / "ca.key").exists()


def test_init_writes_nothing_when_a_server_file_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_bytes(b"someone else's key")
    with pytest.raises(
        Fair4FreeError, match=r"server\.key exists; refusing to overwrite"
    ) as caught:
        init_pki(tmp_path)
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]
    assert (tmp_path / "server.key").read_bytes() == b"someone else's key"


def test_init_into_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(Fair4FreeError, match="cannot create folder") as caught:
        init_pki(tmp_path / "file" / "pki")
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE


def test_issue_refuses_existing_client(pki: PkiLayout) -> None:
    cert_path, key_path = issue_client(pki.root, "alice")
    before = cert_path.read_bytes(), key_path.read_bytes()
    with pytest.raises(Fair4FreeError, match="client 'alice' already exists") as caught:
        issue_client(pki.root, "alice")
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_issue_refuses_when_only_the_key_exists(pki: PkiLayout) -> None:
    pki.clients_dir.mkdir()
    pki.client_key("alice").write_bytes(b"stray")
    with pytest.raises(Fair4FreeError, match="client 'alice' already exists") as caught:
        issue_client(pki.root, "alice")
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert not pki.client_cert("alice").exists()


@pytest.mark.parametrize(
    "name",
    ["", "Alice", "-alice", ".alice", "_a", "../evil", "a/b", "a b", "a" * 64, "é", "alice\n"],
)
def test_bad_client_names_are_refused(pki: PkiLayout, name: str) -> None:
    with pytest.raises(Fair4FreeError, match="client name .* is invalid") as caught:
        issue_client(pki.root, name)
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert not pki.clients_dir.exists()


@pytest.mark.parametrize("name", ["a", "0", "a" * 63, "lab-1.site_2", "x.y"])
def test_good_client_names_are_issued(pki: PkiLayout, name: str) -> None:
    cert_path, key_path = issue_client(pki.root, name)
    assert cert_path.name == f"{name}.crt"
    assert key_path.name == f"{name}.key"
    san = ext(load_cert(cert_path), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [client_identity_uri(name)]


def test_client_identity_uri() -> None:
    assert client_identity_uri("alice") == "fair4free://consumer/alice"
    with pytest.raises(Fair4FreeError) as caught:
        client_identity_uri("Alice")
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_issue_without_a_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(Fair4FreeError, match=r"CA certificate file .*ca\.crt does not exist") as e:
        issue_client(tmp_path, "alice")
    assert e.value.code is ErrorCode.TLS_MATERIAL
    assert not (tmp_path / "clients").exists()


def test_issue_with_a_foreign_ca_key_is_refused(tmp_path: Path) -> None:
    ours, theirs = init_pki(tmp_path / "ours"), init_pki(tmp_path / "theirs")
    ours.ca_key.unlink()
    ours.ca_key.write_bytes(theirs.ca_key.read_bytes())
    with pytest.raises(Fair4FreeError, match="does not belong to CA certificate") as caught:
        issue_client(ours.root, "alice")
    assert caught.value.code is ErrorCode.TLS_MATERIAL


def test_issue_with_a_garbage_ca_key_is_refused(pki: PkiLayout) -> None:
    pki.ca_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n")
    with pytest.raises(Fair4FreeError, match="is not an unencrypted PEM private key") as caught:
        issue_client(pki.root, "alice")
    assert caught.value.code is ErrorCode.TLS_MATERIAL


@pytest.mark.parametrize("days", [0, -1, 3651])
def test_bad_lifetimes_are_refused(tmp_path: Path, days: int) -> None:
    with pytest.raises(Fair4FreeError, match=f"lifetime of {days} days is invalid") as caught:
        init_pki(tmp_path / "pki", days=days)
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert not (tmp_path / "pki").exists()
    init_pki(tmp_path / "pki")
    with pytest.raises(Fair4FreeError, match=f"lifetime of {days} days is invalid") as caught:
        issue_client(tmp_path / "pki", "alice", days=days)
    assert caught.value.code is ErrorCode.CONFIG_INVALID


@pytest.mark.parametrize(
    ("hostnames", "ip_addresses", "message"),
    [
        (("bad host",), (), "host name 'bad host' is invalid"),
        (("*.example.org",), (), r"host name '\*\.example\.org' is invalid"),
        (("-x.org",), (), "host name '-x.org' is invalid"),
        (("localhost",), ("300.1.1.1",), "IP address '300.1.1.1' is not a valid"),
        (("localhost",), ("localhost",), "IP address 'localhost' is not a valid"),
        ((), (), "needs at least one host name or IP address"),
    ],
)
def test_bad_server_addresses_are_refused(
    tmp_path: Path, hostnames: tuple[str, ...], ip_addresses: tuple[str, ...], message: str
) -> None:
    with pytest.raises(Fair4FreeError, match=message) as caught:
        init_pki(tmp_path / "pki", hostnames=hostnames, ip_addresses=ip_addresses)
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert not (tmp_path / "pki").exists()


def test_ip_only_server_certificate(tmp_path: Path) -> None:
    layout = init_pki(tmp_path, hostnames=(), ip_addresses=("127.0.0.1",))
    san = ext(load_cert(layout.server_cert), x509.SubjectAlternativeName).value
    assert list(san) == [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def test_client_files_match_what_was_issued(pki: PkiLayout) -> None:
    cert_path, key_path = issue_client(pki.root, "alice")
    files = pki.client_files("alice")
    assert files == TlsFiles.from_pki_dir(pki.root, "alice")
    assert (files.ca, files.cert, files.key) == (pki.ca_cert, cert_path, key_path)
