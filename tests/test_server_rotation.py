"""Renewing the daemon's certificate while it serves: new handshakes get it, bad copies do not."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from test_audit_daemon import TIMEOUT, _stub
from test_cli import run

from conftest import CLIENT_NAME, UNLIMITED, write_policy
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.pki import PkiLayout, init_pki, issue_client, renew_server
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import OwnerDaemon, ServerConfig, build_server
from fair4free.data_owner.server_cert import NAMES_UNREADABLE
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

NOT_RELOADED = "server certificate not reloaded, still serving serial {serial:x}: "


@pytest.fixture
def own_pki(tmp_path: Path) -> PkiLayout:
    """A PKI of the test's own: renewing the session's would change other tests' daemons."""
    layout = init_pki(tmp_path / "pki")
    issue_client(layout.root, CLIENT_NAME)
    return layout


@pytest.fixture
def daemon(tmp_path: Path, teacher_dir: Path, own_pki: PkiLayout) -> Iterator[OwnerDaemon]:
    state = tmp_path / "state"
    state.mkdir()
    config = ServerConfig(
        policy=write_policy(state / "policy.toml", UNLIMITED), state_dir=state,
        crl=own_pki.crl, listen="127.0.0.1:0", seed=0,
    )  # fmt: skip
    started = build_server(load_teacher(teacher_dir), tls=own_pki.server_files(), config=config)
    yield started
    started.stop(0)


def served_serial(port: int, pki: PkiLayout) -> int:
    """The serial of the certificate a new TLS handshake with the daemon gets.

    gRPC's Python channel does not expose the peer certificate, so this shakes hands itself, as
    a consumer would: trusting only the CA, presenting its client certificate, offering HTTP/2.
    """
    files = pki.client_files(CLIENT_NAME)
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def answers(stub: pb_grpc.OwnerServiceStub) -> bool:
    return bool(stub.GetManifest(pb.GetManifestRequest(request_id="m"), timeout=TIMEOUT).model_id)


def test_a_renewed_certificate_serves_new_connections_without_a_restart(
    daemon: OwnerDaemon, own_pki: PkiLayout
) -> None:
    address = f"127.0.0.1:{daemon.port}"
    old_serial = file_serial(own_pki.server_cert)
    old_names = x509.load_pem_x509_certificate(own_pki.server_cert.read_bytes()).extensions
    assert served_serial(daemon.port, own_pki) == old_serial
    before = _stub(address, own_pki, CLIENT_NAME)
    assert answers(before)  # a connection made with the old certificate

    result = run("owner", "pki", "renew-server", "--dir", str(own_pki.root))
    assert result.returncode == 0, result.stderr
    new_serial = file_serial(own_pki.server_cert)
    assert new_serial != old_serial
    assert f"serial {new_serial:x} (replaces {old_serial:x})" in result.stdout
    assert "for localhost, 127.0.0.1" in result.stdout
    renewed = x509.load_pem_x509_certificate(own_pki.server_cert.read_bytes())
    assert renewed.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ) == old_names.get_extension_for_class(x509.SubjectAlternativeName)
    assert own_pki.server_key.stat().st_mode & 0o777 == 0o600

    assert served_serial(daemon.port, own_pki) == new_serial
    assert answers(_stub(address, own_pki, CLIENT_NAME))
    assert answers(before)  # the old certificate is not revoked: open connections carry on


def _garbage(pki: PkiLayout, elsewhere: Path) -> None:
    pki.server_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END ")


def _foreign_key(pki: PkiLayout, elsewhere: Path) -> None:
    shutil.copy(init_pki(elsewhere).server_key, pki.server_key)


def _foreign_ca(pki: PkiLayout, elsewhere: Path) -> None:
    other = init_pki(elsewhere)
    shutil.copy(other.server_key, pki.server_key)
    shutil.copy(other.server_cert, pki.server_cert)


@pytest.mark.parametrize(
    ("spoil", "detail"),
    [
        (_garbage, "server certificate file {cert} holds no valid PEM certificate"),
        (_foreign_key, "server private key {key} does not belong to the certificate {cert}"),
        (_foreign_ca, "server certificate {cert} was not issued by the CA in {ca}"),
    ],
    ids=["garbage", "mismatched-key", "another-ca"],
)
def test_a_bad_replacement_is_logged_and_the_served_certificate_kept(
    daemon: OwnerDaemon,
    own_pki: PkiLayout,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    spoil: Callable[[PkiLayout, Path], None],
    detail: str,
) -> None:
    serial = file_serial(own_pki.server_cert)
    spoil(own_pki, tmp_path / "elsewhere")
    with caplog.at_level(logging.ERROR, logger="fair4free.data_owner.server_tls"):
        assert served_serial(daemon.port, own_pki) == serial
        assert answers(_stub(f"127.0.0.1:{daemon.port}", own_pki, CLIENT_NAME))
    files = own_pki.server_files()
    expected = NOT_RELOADED.format(serial=serial) + detail.format(
        cert=files.cert, key=files.key, ca=files.ca
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(expected), errors

    renewed = renew_server(own_pki.root, hostnames=["localhost"], ip_addresses=["127.0.0.1"])
    assert served_serial(daemon.port, own_pki) == int(renewed.serial_hex, 16)  # fixed: picked up


def test_renewal_without_a_readable_certificate_asks_for_the_names(own_pki: PkiLayout) -> None:
    own_pki.server_cert.unlink()
    problem = f"server certificate file {own_pki.server_cert} does not exist"
    with pytest.raises(Fair4FreeError, match=re.escape(NAMES_UNREADABLE.format(problem=problem))):
        renew_server(own_pki.root)
    renewed = renew_server(own_pki.root, hostnames=["owner.example.org"])
    assert (renewed.names, renewed.replaced_serial_hex) == ("owner.example.org", None)


def test_renewal_needs_the_ca_key(own_pki: PkiLayout) -> None:
    own_pki.ca_key.unlink()
    with pytest.raises(
        Fair4FreeError, match=re.escape(f"CA private key file {own_pki.ca_key}")
    ) as e:
        renew_server(own_pki.root)
    assert e.value.code is ErrorCode.TLS_MATERIAL
