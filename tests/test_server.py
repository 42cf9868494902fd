"""The daemon over a real socket with real mTLS: answers, refusals and their exact statuses."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import CLIENT_NAME, MAX_ROWS_PER_CALL, UNLIMITED, write_policy
from fair4free.common.codec import tensor_to_proto
from fair4free.common.encoding import TableEncoder
from fair4free.common.errors import Fair4FreeError
from fair4free.common.tls import channel_credentials
from fair4free.consumer.client import OwnerClient
from fair4free.data_owner import queries
from fair4free.data_owner.pki import PkiLayout
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import ServerConfig, build_server
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc
from forged_certs import forge, write_pair

TIMEOUT = 10


@pytest.fixture
def channel(server_address: str, pki_dir: PkiLayout) -> Iterator[grpc.Channel]:
    files = pki_dir.client_files(CLIENT_NAME)
    credentials = channel_credentials(ca=files.ca, cert=files.cert, key=files.key)
    with grpc.secure_channel(server_address, credentials) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.OwnerServiceStub:
    return pb_grpc.OwnerServiceStub(channel)


def test_manifest_describes_the_served_teacher(client: OwnerClient, teacher_dir) -> None:
    teacher = load_teacher(teacher_dir)
    manifest = client.manifest()
    assert manifest.model_id == teacher.model_id
    assert manifest.content_hash == teacher.content_hash
    assert manifest.latent_dim == 4
    assert manifest.max_rows_per_call == MAX_ROWS_PER_CALL
    encoder = TableEncoder.from_dict(dict(manifest.encoding))
    assert manifest.output_dim == encoder.width
    assert sum(manifest.sensitive_marginal) == pytest.approx(1.0)
    assert encoder.schema == teacher.encoder.schema


def test_sample_latents_spans_several_calls_and_is_not_constant(client: OwnerClient) -> None:
    latents = client.sample_latents(MAX_ROWS_PER_CALL * 2 + 100)
    assert latents.shape == (MAX_ROWS_PER_CALL * 2 + 100, 4)
    assert np.isfinite(latents).all()
    assert latents.std(axis=0).min() > 0.05


def test_batched_decode_matches_per_row_decode(client: OwnerClient, teacher_dir) -> None:
    teacher = load_teacher(teacher_dir)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((600, 4)).astype(np.float32)
    sensitive = rng.integers(0, 2, 600).astype(np.int64)
    batched = client.decode(latents, sensitive)
    for row in range(0, 600, 97):
        single = queries.decode(teacher, latents[row : row + 1], sensitive[row : row + 1])
        np.testing.assert_allclose(batched[row], single[0], atol=1e-5)
    for block in teacher.encoder.blocks:
        if block.kind != "numeric":
            sums = batched[:, block.start : block.stop].sum(axis=1)
            np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_health_service_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "fair4free.v1.OwnerService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def _decode_request(latents: np.ndarray, sensitive: np.ndarray) -> pb.DecodeRequest:
    return pb.DecodeRequest(
        request_id="r1", latents=tensor_to_proto(latents), sensitive=tensor_to_proto(sensitive)
    )


GOOD_Z = np.zeros((2, 4), dtype=np.float32)
GOOD_S = np.zeros(2, dtype=np.int64)


@pytest.mark.parametrize(
    ("request_message", "detail"),
    [
        (_decode_request(np.full((2, 4), np.nan, np.float32), GOOD_S),
         "latents: contains NaN or infinite values"),
        (_decode_request(np.zeros((2, 3), np.float32), GOOD_S),
         "latents: dimension 1 is 3, expected 4"),
        (_decode_request(GOOD_Z, np.zeros(3, np.int64)), "sensitive: dimension 0 is 3, expected 2"),
        (_decode_request(GOOD_Z, np.array([0, 7], np.int64)),
         r"sensitive: indices must lie in \[0, 2\)"),
        (_decode_request(np.zeros((MAX_ROWS_PER_CALL + 1, 4), np.float32),
                         np.zeros(MAX_ROWS_PER_CALL + 1, np.int64)),
         f"latents: {MAX_ROWS_PER_CALL + 1} rows exceed the cap of {MAX_ROWS_PER_CALL}"),
        (pb.DecodeRequest(request_id="r1", latents=pb.Tensor(dtype="float32", shape=[2, 4],
                                                             data=b"\0" * 31),
                          sensitive=tensor_to_proto(GOOD_S)),
         r"latents: 31 bytes do not match shape \(2, 4\) \(32 bytes\)"),
        (pb.DecodeRequest(latents=tensor_to_proto(GOOD_Z), sensitive=tensor_to_proto(GOOD_S)),
         "request_id must be 1 to 128 characters, got 0"),
    ],
)  # fmt: skip
def test_malformed_decode_requests_get_invalid_argument(
    stub: pb_grpc.OwnerServiceStub, request_message: pb.DecodeRequest, detail: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Decode(request_message, timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() is not None
    assert re.match(detail, caught.value.details())


@pytest.mark.parametrize(
    ("rows", "detail"),
    [
        (0, "rows must be at least 1, got 0"),
        (MAX_ROWS_PER_CALL + 1, f"rows: {MAX_ROWS_PER_CALL + 1} rows exceed the cap"),
    ],
)
def test_bad_row_counts_get_invalid_argument(
    stub: pb_grpc.OwnerServiceStub, rows: int, detail: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(
            stub.SampleLatents(pb.SampleLatentsRequest(request_id="r", rows=rows), timeout=TIMEOUT)
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(detail)


def test_client_without_certificate_is_refused(server_address: str, pki_dir: PkiLayout) -> None:
    credentials = channel_credentials(ca=pki_dir.ca_cert, cert=None, key=None)
    with grpc.secure_channel(server_address, credentials) as channel:
        stub = pb_grpc.OwnerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetManifest(pb.GetManifestRequest(request_id="r"), timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused(server_address: str) -> None:
    with grpc.insecure_channel(server_address) as channel:
        stub = pb_grpc.OwnerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetManifest(pb.GetManifestRequest(request_id="r"), timeout=TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_certificate_naming_no_consumer_is_unauthenticated(
    server_address: str, pki_dir: PkiLayout, tmp_path: Path
) -> None:
    """The CA signed it, so the handshake passes; the identity interceptor must refuse it."""
    cert, key = forge(pki_dir, uris=["https://example.org/not-a-consumer"])
    cert_path, key_path = write_pair(tmp_path, cert, key)
    credentials = channel_credentials(ca=pki_dir.ca_cert, cert=cert_path, key=key_path)
    with grpc.secure_channel(server_address, credentials) as channel:
        stub = pb_grpc.OwnerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetManifest(pb.GetManifestRequest(request_id="r"), timeout=TIMEOUT)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert (caught.value.details() or "").startswith(
            "the client certificate names no consumer identity"
        )
        with pytest.raises(grpc.RpcError) as streamed:
            list(
                stub.SampleLatents(pb.SampleLatentsRequest(request_id="r", rows=1), timeout=TIMEOUT)
            )
        assert streamed.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("fault", ["unreadable key", "address not here"])
def test_a_daemon_that_fails_to_start_leaves_its_state_unlocked(
    teacher_dir: Path, pki_dir: PkiLayout, tmp_path: Path, fault: str
) -> None:
    """The audit log holds an exclusive lock: a failed start must let the next one take it."""
    teacher = load_teacher(teacher_dir)
    policy = write_policy(tmp_path / "policy.toml", UNLIMITED)
    good = ServerConfig(policy=policy, state_dir=tmp_path / "state", listen="127.0.0.1:0")
    tls, config = pki_dir.server_files(), good
    if fault == "unreadable key":
        garbage = tmp_path / "server.key"
        garbage.write_text("not a key\n")
        tls = dataclasses.replace(tls, key=garbage)
    else:  # 192.0.2.1 is a documentation address (RFC 5737): no interface here has it
        config = dataclasses.replace(good, listen="192.0.2.1:50051")
    with pytest.raises(Fair4FreeError):
        build_server(teacher, tls=tls, config=config)
    daemon = build_server(teacher, tls=pki_dir.server_files(), config=good)  # not "locked"
    daemon.stop(0)
