"""PKI across two organisations: the consumer's key and request, the owner's signing, revocation.

Everything runs on real files in tmp_path: a real CA, real requests (well-formed and forged), real
revocation lists, and a real mutual-TLS handshake that checks revocation the way the daemon will.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fair4free.common.errors import ErrorCode, ExitCode, Fair4FreeError
from fair4free.common.revocation import RevocationList, certificate_serial
from fair4free.common.tls import (
    CLIENT_URI_PREFIX,
    certificate_fingerprint,
    channel_credentials,
    csr_client_name,
    peer_identity,
    public_key_fingerprint,
)
from fair4free.consumer.pki_request import CertificateRequest, request_certificate
from fair4free.data_owner.ca_index import CaIndex, Origin
from fair4free.data_owner.pki import (
    PkiLayout,
    init_pki,
    issue_client,
    publish_crl,
    revoke_client,
    sign_csr,
)
from fair4free.data_owner.server_tls import server_credentials

DAY = datetime.timedelta(days=1)
URI_RULE = re.escape("it must ask for exactly one, fair4free://consumer/<name>")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_crl(layout: PkiLayout) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(layout.crl.read_bytes())


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ca_key_of(layout: PkiLayout) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture
def pki(tmp_path: Path) -> PkiLayout:
    return init_pki(tmp_path / "owner" / "pki")


@pytest.fixture
def acme(tmp_path: Path) -> CertificateRequest:
    return request_certificate(tmp_path / "acme", "acme")


# --- crafting requests the consumer tool never makes ----------------------------------------


def write_csr(
    path: Path,
    *,
    common_names: Sequence[str] = ("acme",),
    uris: Sequence[str] | None = (CLIENT_URI_PREFIX + "acme",),
    dns_names: Sequence[str] = (),
    extensions: Sequence[x509.ExtensionType] = (),
    key: CertificateIssuerPrivateKeyTypes | None = None,
    organization: str | None = None,
) -> Path:
    """Write a signing request; ``uris=None`` leaves the SAN extension out entirely."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if uris is not None or dns_names:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris or ()]
        names += [x509.DNSName(d) for d in dns_names]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    csr = builder.sign(key, hashes.SHA256())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def tamper_signature(path: Path) -> None:
    """Flip the last byte of the request's signature: still DER, no longer a valid signature."""
    der = bytearray(
        x509.load_pem_x509_csr(path.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01
    csr = x509.load_der_x509_csr(bytes(der))
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))


def forge_crl(
    path: Path,
    *,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    serials: Sequence[int] = (),
    number: int | None = 100,
    next_update: datetime.datetime | None = None,
) -> Path:
    next_update = next_update or now() + DAY
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(min(now(), next_update) - DAY)
        .next_update(next_update)
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now()).build()
        )
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


# --- the consumer's request ------------------------------------------------------------------


def test_request_makes_a_private_key_and_a_matching_request(acme: CertificateRequest) -> None:
    assert acme.key == acme.key.parent / "acme.key"
    assert acme.csr == acme.key.parent / "acme.csr"
    assert acme.uri == "fair4free://consumer/acme"
    assert mode(acme.key) == 0o600
    assert mode(acme.csr) == 0o644
    key = serialization.load_pem_private_key(acme.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    csr = x509.load_pem_x509_csr(acme.csr.read_bytes())
    assert csr.is_signature_valid
    assert public_key_fingerprint(csr.public_key()) == public_key_fingerprint(key.public_key())
    assert acme.key_sha256 == public_key_fingerprint(key.public_key())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("fair4free://consumer/acme")]
    assert csr_client_name(csr, "acme.csr") == "acme"
    assert b"PRIVATE KEY" not in acme.csr.read_bytes()
    text = acme.instructions()
    assert f"send {acme.csr} to the data owner" in text
    assert f"sha256:{acme.key_sha256}" in text


def test_request_key_mode_does_not_depend_on_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        made = request_certificate(tmp_path / "wide", "lab")
    finally:
        os.umask(old)
    assert mode(made.key) == 0o600
    assert mode(made.key.parent) == 0o700


def test_request_never_overwrites_a_key(acme: CertificateRequest) -> None:
    before = acme.key.read_bytes()
    with pytest.raises(
        Fair4FreeError,
        match=r"a key or request for 'acme' already exists: .*acme\.key exists; "
        "refusing to overwrite it",
    ) as caught:
        request_certificate(acme.key.parent, "acme")
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert acme.key.read_bytes() == before


def test_request_with_only_a_stray_request_writes_no_key(tmp_path: Path) -> None:
    (tmp_path / "lab.csr").write_bytes(b"stray")
    with pytest.raises(Fair4FreeError, match=r"lab\.csr exists; refusing to overwrite it") as e:
        request_certificate(tmp_path, "lab")
    assert e.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert not (tmp_path / "lab.key").exists()


@pytest.mark.parametrize("name", ["Acme", "../acme", "", "a b"])
def test_request_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(Fair4FreeError, match=r"client name .* is invalid: use 1-63") as caught:
        request_certificate(tmp_path / "out", name)
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert not (tmp_path / "out").exists()


# --- the owner signs -------------------------------------------------------------------------


def test_signed_certificate_chains_to_the_ca_and_carries_the_identity(
    pki: PkiLayout, acme: CertificateRequest
) -> None:
    issued = sign_csr(pki.root, acme.csr)
    cert_path = pki.client_cert("acme")
    ca, cert = load_cert(pki.ca_cert), load_cert(cert_path)
    cert.verify_directly_issued_by(ca)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    own_ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert own_ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("fair4free://consumer/acme")]
    assert peer_identity({"x509_pem_cert": [cert_path.read_bytes()]}) == acme.uri
    assert public_key_fingerprint(cert.public_key()) == acme.key_sha256
    assert cert.not_valid_after_utc <= min(now() + 90 * DAY, ca.not_valid_after_utc)
    assert mode(cert_path) == 0o644
    assert issued.name == "acme"
    assert issued.serial == cert.serial_number
    assert issued.origin is Origin.CONSUMER_CSR
    assert issued.sha256 == certificate_fingerprint(cert_path.read_bytes())
    assert issued.key_sha256 == acme.key_sha256
    assert issued.revoked_at is None
    assert CaIndex.load(pki.index).current("acme") == issued
    # The consumer's key and credentials work together, and never reached the owner.
    channel_credentials(ca=pki.ca_cert, cert=cert_path, key=acme.key)
    assert not pki.client_key("acme").exists()
    secret = acme.key.read_bytes()
    for path in pki.root.rglob("*"):
        assert not path.is_file() or secret not in path.read_bytes(), path


def test_the_ca_decides_everything_but_the_identity(pki: PkiLayout, tmp_path: Path) -> None:
    greedy = write_csr(
        tmp_path / "greedy.csr",
        organization="evil corp",
        dns_names=["owner.example.org"],
        extensions=[
            x509.BasicConstraints(ca=True, path_length=None),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
    )
    sign_csr(pki.root, greedy, days=3650)
    cert = load_cert(pki.client_cert("acme"))
    assert cert.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fair4free"),
            x509.NameAttribute(NameOID.COMMON_NAME, "acme"),
        ]
    )
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical and key_usage.value.digital_signature
    assert not key_usage.value.key_cert_sign and not key_usage.value.crl_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("fair4free://consumer/acme")]
    # 3650 days were asked for; the CA (365 days) caps the lifetime.
    assert cert.not_valid_after_utc <= load_cert(pki.ca_cert).not_valid_after_utc


def test_signed_lifetime_is_bounded(pki: PkiLayout, acme: CertificateRequest) -> None:
    with pytest.raises(
        Fair4FreeError, match=re.escape("certificate lifetime of 3651 days is invalid: use 1 to")
    ) as caught:
        sign_csr(pki.root, acme.csr, days=3651)
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    sign_csr(pki.root, acme.csr, days=7)
    cert = load_cert(pki.client_cert("acme"))
    assert cert.not_valid_after_utc <= now() + 7 * DAY


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uris": None}, f"asks for no SAN URI; {URI_RULE}"),
        ({"uris": (), "dns_names": ["acme.example.org"]}, f"asks for no SAN URI; {URI_RULE}"),
        (
            {"uris": [CLIENT_URI_PREFIX + "acme", CLIENT_URI_PREFIX + "eve"]},
            re.escape(
                "asks for 2 SAN URIs ('fair4free://consumer/acme', 'fair4free://consumer/eve'); "
            )
            + URI_RULE,
        ),
        (
            {"uris": ["https://example.org/acme"]},
            re.escape("asks for SAN URI 'https://example.org/acme', which names no consumer; ")
            + URI_RULE,
        ),
        (
            {"uris": [CLIENT_URI_PREFIX + "Acme"], "common_names": ["Acme"]},
            re.escape("asks for an invalid name: client name 'Acme' is invalid: use 1-63"),
        ),
        (
            {"uris": [CLIENT_URI_PREFIX + "../x"]},
            re.escape("asks for an invalid name: client name '../x' is invalid"),
        ),
        (
            {"common_names": ["mallory"]},
            re.escape(
                "has subject common name 'mallory' but asks for consumer 'acme'; they must be equal"
            ),
        ),
        (
            {"common_names": []},
            re.escape("has subject common name none but asks for consumer 'acme'"),
        ),
        (
            {"common_names": ["acme", "acme"]},
            re.escape("has subject common name 'acme' and 'acme' but asks for consumer 'acme'"),
        ),
        (
            {"key": rsa.generate_private_key(public_exponent=65537, key_size=1024)},
            re.escape("carries a key the CA does not certify (1024-bit RSA); use an EC P-256"),
        ),
        (
            {"key": ec.generate_private_key(ec.SECP521R1())},
            re.escape("carries a key the CA does not certify (EC secp521r1)"),
        ),
    ],
)
def test_unacceptable_requests_are_refused(
    pki: PkiLayout, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    csr = write_csr(tmp_path / "bad.csr", **kwargs)
    index_before = pki.index.read_bytes()
    with pytest.raises(Fair4FreeError, match=r"^certificate request .*bad\.csr " + message) as e:
        sign_csr(pki.root, csr)
    assert e.value.code is ErrorCode.TLS_MATERIAL
    assert not pki.clients_dir.exists()
    assert pki.index.read_bytes() == index_before


def test_a_forged_signature_is_refused(pki: PkiLayout, acme: CertificateRequest) -> None:
    tamper_signature(acme.csr)
    with pytest.raises(
        Fair4FreeError,
        match=r"^certificate request .*acme\.csr has an invalid signature, so it does not prove "
        "possession of its key",
    ) as caught:
        sign_csr(pki.root, acme.csr)
    assert caught.value.code is ErrorCode.TLS_MATERIAL
    assert not pki.clients_dir.exists()


def test_strong_rsa_and_p384_keys_are_certified(pki: PkiLayout, tmp_path: Path) -> None:
    keys: list[tuple[str, CertificateIssuerPrivateKeyTypes]] = [
        ("rsa-lab", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("p384-lab", ec.generate_private_key(ec.SECP384R1())),
    ]
    for name, key in keys:
        csr = write_csr(
            tmp_path / f"{name}.csr",
            common_names=[name],
            uris=[CLIENT_URI_PREFIX + name],
            key=key,
        )
        sign_csr(pki.root, csr)
        load_cert(pki.client_cert(name)).verify_directly_issued_by(load_cert(pki.ca_cert))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"certificate request file .*missing\.csr does not exist"),
        (b"not pem at all", r"certificate request file .*missing\.csr is not PEM"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nbm9wZQ==\n-----END CERTIFICATE REQUEST-----\n",
            r"certificate request file .*missing\.csr holds no valid PEM certificate signing req",
        ),
    ],
)
def test_unreadable_requests_are_refused(
    pki: PkiLayout, tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "missing.csr"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(Fair4FreeError, match=message) as caught:
        sign_csr(pki.root, path)
    assert caught.value.code is ErrorCode.TLS_MATERIAL


def test_a_certificate_is_not_a_request(pki: PkiLayout) -> None:
    with pytest.raises(Fair4FreeError, match="holds no valid PEM certificate signing req") as e:
        sign_csr(pki.root, pki.server_cert)
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_a_name_already_issued_is_refused(pki: PkiLayout, acme: CertificateRequest) -> None:
    issued = sign_csr(pki.root, acme.csr)
    before = pki.client_cert("acme").read_bytes()
    other = request_certificate(acme.key.parent.parent / "acme-again", "acme")
    with pytest.raises(
        Fair4FreeError,
        match=re.escape(
            f"client 'acme' already holds certificate serial {issued.serial_hex}, valid until "
            f"{issued.not_after:%Y-%m-%d}; revoke it first with "
            "'fair4free-owner pki revoke --name acme'"
        ),
    ) as caught:
        sign_csr(pki.root, other.csr)
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert pki.client_cert("acme").read_bytes() == before
    assert len(CaIndex.load(pki.index).certificates) == 1


def test_a_name_issued_by_the_owner_is_refused_too(
    pki: PkiLayout, acme: CertificateRequest
) -> None:
    issue_client(pki.root, "acme")
    with pytest.raises(Fair4FreeError, match="client 'acme' already holds certificate") as e:
        sign_csr(pki.root, acme.csr)
    assert e.value.code is ErrorCode.OUTPUT_UNWRITABLE
    revoke_client(pki.root, "acme")
    with pytest.raises(
        Fair4FreeError,
        match=r"client 'acme' has a private key made by the owner, .*acme\.key; remove it before",
    ) as e:
        sign_csr(pki.root, acme.csr)
    assert e.value.code is ErrorCode.OUTPUT_UNWRITABLE
    pki.client_key("acme").unlink()
    assert sign_csr(pki.root, acme.csr).origin is Origin.CONSUMER_CSR


def test_a_revoked_name_is_issued_again_for_a_new_key(
    pki: PkiLayout, acme: CertificateRequest
) -> None:
    first = sign_csr(pki.root, acme.csr)
    revoke_client(pki.root, "acme")
    with pytest.raises(
        Fair4FreeError,
        match=re.escape(
            f"the public key sha256:{acme.key_sha256} was in certificate serial "
            f"{first.serial_hex}, revoked on {now():%Y-%m-%d}; the consumer must make a new key"
        ),
    ) as caught:
        sign_csr(pki.root, acme.csr)
    assert caught.value.code is ErrorCode.TLS_MATERIAL
    fresh = request_certificate(acme.key.parent.parent / "acme-new", "acme")
    second = sign_csr(pki.root, fresh.csr)
    assert second.serial != first.serial
    cert = load_cert(pki.client_cert("acme"))
    assert cert.serial_number == second.serial
    assert public_key_fingerprint(cert.public_key()) == fresh.key_sha256
    index = CaIndex.load(pki.index)
    assert [c.serial for c in index.certificates] == [first.serial, second.serial]
    assert index.current("acme") == second


def test_one_key_is_certified_for_one_identity(pki: PkiLayout, acme: CertificateRequest) -> None:
    sign_csr(pki.root, acme.csr)
    key = serialization.load_pem_private_key(acme.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    twin = write_csr(
        acme.key.parent / "twin.csr",
        common_names=["twin"],
        uris=[CLIENT_URI_PREFIX + "twin"],
        key=key,
    )
    with pytest.raises(
        Fair4FreeError,
        match=re.escape(f"the public key sha256:{acme.key_sha256} is already certified for ")
        + r"client 'acme' \(serial [0-9a-f]+\); each consumer needs a key of its own",
    ) as caught:
        sign_csr(pki.root, twin)
    assert caught.value.code is ErrorCode.TLS_MATERIAL


def test_a_stray_certificate_file_is_never_overwritten(
    pki: PkiLayout, acme: CertificateRequest
) -> None:
    pki.clients_dir.mkdir()
    pki.client_cert("acme").write_bytes(b"someone else's certificate")
    with pytest.raises(
        Fair4FreeError, match=r"client 'acme' already exists: .*acme\.crt exists; refusing"
    ) as caught:
        sign_csr(pki.root, acme.csr)
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert pki.client_cert("acme").read_bytes() == b"someone else's certificate"
    assert CaIndex.load(pki.index).current("acme") is None


def test_a_failed_write_withdraws_the_record(pki: PkiLayout, acme: CertificateRequest) -> None:
    pki.clients_dir.write_bytes(b"a file where the clients folder belongs")
    with pytest.raises(Fair4FreeError, match=r"cannot create folder .*clients") as caught:
        sign_csr(pki.root, acme.csr)
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert CaIndex.load(pki.index).certificates == ()


def test_signing_without_a_ca_names_the_missing_file(
    tmp_path: Path, acme: CertificateRequest
) -> None:
    with pytest.raises(Fair4FreeError, match=r"CA certificate file .*ca\.crt does not exist") as e:
        sign_csr(tmp_path / "nothing", acme.csr)
    assert e.value.code is ErrorCode.TLS_MATERIAL
    assert not (tmp_path / "nothing").exists()


def test_issue_client_shares_the_record(pki: PkiLayout) -> None:
    cert_path, _ = issue_client(pki.root, "alice")
    record = CaIndex.load(pki.index).current("alice")
    assert record is not None
    assert record.origin is Origin.OWNER_KEY
    assert record.serial == load_cert(cert_path).serial_number
    assert record.sha256 == certificate_fingerprint(cert_path.read_bytes())


# --- the CA index ----------------------------------------------------------------------------


@pytest.mark.parametrize("stray", ["index.json", "crl.pem"])
def test_init_refuses_a_stray_index_or_crl(tmp_path: Path, stray: str) -> None:
    (tmp_path / stray).write_bytes(b"from another PKI")
    with pytest.raises(
        Fair4FreeError, match=rf"{stray.replace('.', '[.]')} exists; refusing to overwrite"
    ) as caught:
        init_pki(tmp_path)
    assert caught.value.code is ErrorCode.OUTPUT_UNWRITABLE
    assert sorted(p.name for p in tmp_path.iterdir()) == [stray]


def test_index_is_plain_json(pki: PkiLayout, acme: CertificateRequest) -> None:
    issued = sign_csr(pki.root, acme.csr)
    document = json.loads(pki.index.read_text())
    assert document["kind"] == "fair4free-ca-index"
    assert document["version"] == 1
    assert document["crl_number"] == 1
    assert document["certificates"] == [issued.to_json()]
    assert sorted(p.name for p in pki.root.iterdir()) == [
        "ca.crt",
        "ca.key",
        "clients",
        "crl.pem",
        "index.json",
        "server.crt",
        "server.key",
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "JSONDecodeError"),
        ("[]", "TypeError"),
        ('{"kind": "other", "version": 1}', "it is a 'other' version 1 file"),
        (
            '{"kind": "fair4free-ca-index", "version": 1, "crl_number": -1, "certificates": []}',
            "crl_number -1 is not a count",
        ),
        (
            '{"kind": "fair4free-ca-index", "version": 1, "crl_number": 0, '
            '"certificates": [{"serial": "zz"}]}',
            "KeyError",
        ),
    ],
)
def test_a_damaged_index_is_refused(
    pki: PkiLayout, acme: CertificateRequest, text: str, why: str
) -> None:
    pki.index.write_text(text)
    with pytest.raises(
        Fair4FreeError,
        match=r"CA index .*index\.json is damaged \(.*" + re.escape(why) + r".*\); restore it",
    ) as caught:
        sign_csr(pki.root, acme.csr)
    assert caught.value.code is ErrorCode.TLS_MATERIAL
    with pytest.raises(Fair4FreeError, match="is damaged") as caught:
        publish_crl(pki.root)
    assert caught.value.code is ErrorCode.TLS_MATERIAL


# --- revocation: the owner publishes, the daemon checks --------------------------------------


def test_revoke_lists_the_serial_and_the_daemon_sees_it(
    pki: PkiLayout, acme: CertificateRequest
) -> None:
    issued = sign_csr(pki.root, acme.csr)
    fresh_cert, _ = issue_client(pki.root, "fresh")
    first_number = crl_number(load_crl(pki))
    revoked, published = revoke_client(pki.root, "acme")
    assert revoked.serial == issued.serial
    assert revoked.revoked_at is not None
    assert published.path == pki.crl
    assert published.number == first_number + 1
    assert published.revoked == 1
    crl = load_crl(pki)
    assert crl_number(crl) == published.number
    assert crl.is_signature_valid(load_cert(pki.ca_cert).public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(issued.serial)
    assert entry is not None
    assert crl.next_update_utc is not None
    assert now() + 6 * DAY < crl.next_update_utc <= now() + 7 * DAY
    revocations = RevocationList.load(pki.crl, pki.ca_cert)
    acme_serial = certificate_serial(pki.client_cert("acme").read_bytes())
    assert acme_serial == issued.serial
    assert revocations.is_revoked(acme_serial)
    assert not revocations.is_revoked(certificate_serial(fresh_cert.read_bytes()))
    assert revocations.number == published.number
    assert revocations.serials == frozenset({issued.serial})
    assert CaIndex.load(pki.index).current("acme") == revoked


def test_revoking_what_was_never_issued_or_twice(pki: PkiLayout, acme: CertificateRequest) -> None:
    with pytest.raises(
        Fair4FreeError,
        match=r"client 'acme' has no certificate on record in .*index\.json; nothing to revoke",
    ) as caught:
        revoke_client(pki.root, "acme")
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    issued = sign_csr(pki.root, acme.csr)
    revoke_client(pki.root, "acme")
    before = pki.crl.read_bytes()
    with pytest.raises(
        Fair4FreeError,
        match=re.escape(f"client 'acme': certificate serial {issued.serial_hex} was already ")
        + r"revoked on \d{4}-\d\d-\d\d \d\d:\d\d UTC",
    ) as caught:
        revoke_client(pki.root, "acme")
    assert caught.value.code is ErrorCode.CONFIG_INVALID
    assert pki.crl.read_bytes() == before


def test_crl_numbers_increase_and_lifetimes_are_bounded(pki: PkiLayout) -> None:
    numbers = [crl_number(load_crl(pki))]
    for _ in range(3):
        numbers.append(publish_crl(pki.root, days=1).number)
        assert crl_number(load_crl(pki)) == numbers[-1]
    assert numbers == sorted(set(numbers))
    for days in (0, 367):
        with pytest.raises(
            Fair4FreeError,
            match=re.escape(f"revocation list validity of {days} days is invalid: use 1 to 366"),
        ) as caught:
            publish_crl(pki.root, days=days)
        assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_crl_never_outlives_the_ca(tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "short", days=2)
    published = publish_crl(layout.root, days=30)
    assert published.next_update <= load_cert(layout.ca_cert).not_valid_after_utc


def test_a_crl_from_another_ca_is_refused(pki: PkiLayout, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    with pytest.raises(
        Fair4FreeError,
        match=r"certificate revocation list .*other/crl\.pem was issued by '.*', not by the CA "
        r"in .*pki/ca\.crt",
    ) as caught:
        RevocationList.load(other.crl, pki.ca_cert)
    assert caught.value.code is ErrorCode.TLS_MATERIAL


def test_a_crl_naming_our_ca_but_signed_by_another_key_is_refused(
    pki: PkiLayout, tmp_path: Path
) -> None:
    forged = forge_crl(
        tmp_path / "forged.pem",
        issuer=load_cert(pki.ca_cert).subject,
        key=ec.generate_private_key(ec.SECP256R1()),
    )
    with pytest.raises(
        Fair4FreeError, match=r"forged\.pem is not signed by the CA in .*ca\.crt; publish a fresh"
    ) as caught:
        RevocationList.load(forged, pki.ca_cert)
    assert caught.value.code is ErrorCode.TLS_MATERIAL


@pytest.mark.parametrize(
    ("next_update", "number", "message"),
    [
        (
            now() - DAY,
            100,
            r"expired at .* UTC; publish a fresh one with 'fair4free-owner pki crl'",
        ),
        (None, None, "has no CRL number"),
    ],
)
def test_expired_or_unnumbered_crls_are_refused(
    pki: PkiLayout,
    tmp_path: Path,
    next_update: datetime.datetime | None,
    number: int | None,
    message: str,
) -> None:
    crl = forge_crl(
        tmp_path / "crl.pem",
        issuer=load_cert(pki.ca_cert).subject,
        key=ca_key_of(pki),
        number=number,
        next_update=next_update,
    )
    with pytest.raises(Fair4FreeError, match=message) as caught:
        RevocationList.load(crl, pki.ca_cert)
    assert caught.value.code is ErrorCode.TLS_MATERIAL


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"certificate revocation list file .*crl\.pem does not exist"),
        (b"garbage", r"certificate revocation list file .*crl\.pem is not PEM"),
        (
            b"-----BEGIN X509 CRL-----\nbm9wZQ==\n-----END X509 CRL-----\n",
            r"certificate revocation list .*crl\.pem holds no valid PEM CRL",
        ),
    ],
)
def test_missing_or_garbage_crls_are_refused(
    pki: PkiLayout, content: bytes | None, message: str
) -> None:
    pki.crl.unlink()
    if content is not None:
        pki.crl.write_bytes(content)
    with pytest.raises(Fair4FreeError, match=message) as caught:
        RevocationList.load(pki.crl, pki.ca_cert)
    assert caught.value.code is ErrorCode.TLS_MATERIAL


def test_a_crl_needs_a_usable_ca(pki: PkiLayout, tmp_path: Path) -> None:
    with pytest.raises(
        Fair4FreeError, match=r"CA certificate file .*nope\.crt does not exist"
    ) as e:
        RevocationList.load(pki.crl, tmp_path / "nope.crt")
    assert e.value.code is ErrorCode.TLS_MATERIAL


def test_reload_picks_up_a_new_crl(pki: PkiLayout) -> None:
    alice, _ = issue_client(pki.root, "alice")
    bob, _ = issue_client(pki.root, "bob")
    revocations = RevocationList.load(pki.crl, pki.ca_cert)
    alice_serial = certificate_serial(alice.read_bytes())
    bob_serial = certificate_serial(bob.read_bytes())
    assert not revocations.reload_if_changed()
    assert not revocations.is_revoked(alice_serial)
    revoke_client(pki.root, "alice")
    assert revocations.reload_if_changed()
    assert revocations.is_revoked(alice_serial)
    assert not revocations.is_revoked(bob_serial)
    assert not revocations.reload_if_changed()
    revoke_client(pki.root, "bob")
    assert revocations.reload_if_changed()
    assert revocations.is_revoked(alice_serial) and revocations.is_revoked(bob_serial)


def test_reload_keeps_the_loaded_list_when_the_new_one_is_bad(pki: PkiLayout) -> None:
    alice, _ = issue_client(pki.root, "alice")
    serial = certificate_serial(alice.read_bytes())
    older = pki.crl.read_bytes()
    revoke_client(pki.root, "alice")
    revocations = RevocationList.load(pki.crl, pki.ca_cert)
    loaded = revocations.number
    pki.crl.write_bytes(older)  # an attacker or a stale backup rolls the list back
    with pytest.raises(
        Fair4FreeError,
        match=rf"has number {loaded - 1}, older than the loaded number {loaded}; refusing to roll",
    ) as caught:
        revocations.reload_if_changed()
    assert caught.value.code is ErrorCode.TLS_MATERIAL
    assert revocations.is_revoked(serial)
    pki.crl.write_bytes(b"garbage")
    with pytest.raises(Fair4FreeError, match="is not PEM") as caught:
        revocations.reload_if_changed()
    assert revocations.is_revoked(serial)
    pki.crl.unlink()
    with pytest.raises(Fair4FreeError, match="does not exist"):
        revocations.reload_if_changed()
    published = publish_crl(pki.root)
    assert revocations.reload_if_changed()
    assert revocations.number == published.number
    assert revocations.is_revoked(serial)


def test_an_expired_list_fails_every_check(pki: PkiLayout, tmp_path: Path) -> None:
    ends = now() + datetime.timedelta(seconds=1)
    crl = forge_crl(
        tmp_path / "short.pem",
        issuer=load_cert(pki.ca_cert).subject,
        key=ca_key_of(pki),
        serials=[7],
        next_update=ends,
    )
    revocations = RevocationList.load(crl, pki.ca_cert)
    assert revocations.is_revoked(7)
    time.sleep(max(0.0, (ends - now()).total_seconds()) + 0.05)
    with pytest.raises(
        Fair4FreeError, match=r"short\.pem expired at .* UTC; publish a fresh one"
    ) as caught:
        revocations.is_revoked(8)
    assert caught.value.code is ErrorCode.TLS_MATERIAL


def test_certificate_serial_of_garbage() -> None:
    with pytest.raises(Fair4FreeError, match="the data is not a PEM certificate") as caught:
        certificate_serial(b"garbage")
    assert caught.value.code is ErrorCode.TLS_MATERIAL


# --- over a real mutual-TLS connection -------------------------------------------------------


class RevocationCheckingHealth(health.HealthServicer):
    """A health servicer that checks the caller as the daemon will: identity, then revocation."""

    def __init__(self, revocations: RevocationList) -> None:
        super().__init__()
        self.revocations = revocations
        self.seen: list[tuple[str | None, bool]] = []

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.revocations.reload_if_changed()
        values = context.auth_context()["x509_pem_cert"]  # list at run time; bytes in the stubs
        pem = values if isinstance(values, bytes) else values[0]
        revoked = self.revocations.is_revoked(certificate_serial(pem))
        self.seen.append((peer_identity(context.auth_context()), revoked))
        return super().Check(request, context)


@pytest.fixture
def served(pki: PkiLayout) -> Iterator[tuple[int, RevocationCheckingHealth]]:
    servicer = RevocationCheckingHealth(RevocationList.load(pki.crl, pki.ca_cert))
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
        server = grpc.server(pool)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        files = pki.server_files()
        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(ca=files.ca, cert=files.cert, key=files.key)
        )
        server.start()
        try:
            yield port, servicer
        finally:
            server.stop(None).wait(5)


def test_a_signed_consumer_connects_and_is_revoked_without_restart(
    pki: PkiLayout, acme: CertificateRequest, served: tuple[int, RevocationCheckingHealth]
) -> None:
    port, servicer = served
    sign_csr(pki.root, acme.csr)
    credentials = channel_credentials(ca=pki.ca_cert, cert=pki.client_cert("acme"), key=acme.key)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        revoke_client(pki.root, "acme")
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert servicer.seen == [(acme.uri, False), (acme.uri, True)]


# --- the command lines, as real processes ----------------------------------------------------


def run(side: str, *args: str) -> subprocess.CompletedProcess[str]:
    module = {"owner": "fair4free.data_owner", "consumer": "fair4free.consumer"}[side]
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert text in lines[0], lines[0]


def test_cli_request_sign_revoke_crl(pki: PkiLayout, tmp_path: Path) -> None:
    consumer = tmp_path / "consumer"
    made = run("consumer", "pki", "request", "--dir", str(consumer), "--name", "acme")
    assert made.returncode == 0, made.stderr
    key, csr = consumer / "acme.key", consumer / "acme.csr"
    assert mode(key) == 0o600
    assert f"send {csr} to the data owner" in made.stdout
    fingerprint = public_key_fingerprint(x509.load_pem_x509_csr(csr.read_bytes()).public_key())
    assert f"sha256:{fingerprint}" in made.stdout

    signed = run("owner", "pki", "sign", "--dir", str(pki.root), "--csr", str(csr), "--days", "30")
    assert signed.returncode == 0, signed.stderr
    assert "issued fair4free://consumer/acme" in signed.stdout
    assert f"sha256:{fingerprint}" in signed.stdout
    cert = load_cert(pki.client_cert("acme"))
    cert.verify_directly_issued_by(load_cert(pki.ca_cert))
    assert cert.not_valid_after_utc <= now() + 30 * DAY

    again = run("owner", "pki", "sign", "--dir", str(pki.root), "--csr", str(csr))
    assert_one_line_error(again, ExitCode.BAD_INPUT, "client 'acme' already holds certificate")

    revoked = run("owner", "pki", "revoke", "--dir", str(pki.root), "--name", "acme")
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked fair4free://consumer/acme (serial {cert.serial_number:x})" in revoked.stdout
    assert RevocationList.load(pki.crl, pki.ca_cert).is_revoked(cert.serial_number)

    published = run("owner", "pki", "crl", "--dir", str(pki.root), "--days", "2")
    assert published.returncode == 0, published.stderr
    assert f"published {pki.crl} (CRL number 3, 1 revoked)" in published.stdout


def test_cli_refusals_are_one_line(pki: PkiLayout, tmp_path: Path) -> None:
    two = write_csr(tmp_path / "two.csr", uris=[CLIENT_URI_PREFIX + "a", CLIENT_URI_PREFIX + "b"])
    (tmp_path / "taken.key").write_bytes(b"")
    cases = [
        (("owner", "pki", "sign", "--dir", str(pki.root), "--csr", str(two)),
         ExitCode.BAD_INPUT, "asks for 2 SAN URIs"),
        (("owner", "pki", "sign", "--dir", str(pki.root), "--csr", str(tmp_path / "no.csr")),
         ExitCode.BAD_INPUT, "no.csr does not exist"),
        (("owner", "pki", "revoke", "--dir", str(pki.root), "--name", "nobody"),
         ExitCode.USAGE, "client 'nobody' has no certificate on record"),
        (("consumer", "pki", "request", "--dir", str(tmp_path), "--name", "taken"),
         ExitCode.BAD_INPUT, "taken.key exists; refusing to overwrite"),
    ]  # fmt: skip
    # Independent processes, run side by side: each spends seconds importing the CLI.
    with futures.ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(lambda case: run(*case[0]), cases))
    for (_, code, text), result in zip(cases, results, strict=True):
        assert_one_line_error(result, code, text)
