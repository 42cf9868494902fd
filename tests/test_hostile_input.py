"""Arbitrary protobuf messages sent to a live daemon: no crash, every bad one refused cleanly."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CLIENT_NAME
from fair4free.common.tls import channel_credentials
from fair4free.data_owner.pki import PkiLayout
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

TIMEOUT = 10
# One live daemon serves every example: the fixture is deliberately shared.
LIVE_SERVER = [HealthCheck.function_scoped_fixture]
# What a daemon may answer a hostile message with; anything else (INTERNAL, UNKNOWN) is a bug.
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}

tensors = st.builds(
    pb.Tensor,
    dtype=st.sampled_from(["float32", "int64", "float64", "", "float32 "]),
    shape=st.lists(st.integers(-3, 6), max_size=3),
    data=st.binary(max_size=256),
)
decode_requests = st.builds(
    pb.DecodeRequest,
    request_id=st.text(max_size=140),
    latents=tensors,
    sensitive=tensors,
)
latent_requests = st.builds(
    pb.SampleLatentsRequest,
    request_id=st.text(max_size=140),
    rows=st.integers(-(2**40), 2**40),
)


@pytest.fixture(scope="module")
def stub(server_address: str, pki_dir: PkiLayout) -> Iterator[pb_grpc.OwnerServiceStub]:
    files = pki_dir.client_files(CLIENT_NAME)
    credentials = channel_credentials(ca=files.ca, cert=files.cert, key=files.key)
    with grpc.secure_channel(server_address, credentials) as channel:
        yield pb_grpc.OwnerServiceStub(channel)


def _status(call: object) -> grpc.StatusCode:
    try:
        call() if callable(call) else None
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=decode_requests)
def test_hostile_decode_requests(stub: pb_grpc.OwnerServiceStub, request: pb.DecodeRequest) -> None:
    assert _status(lambda: stub.Decode(request, timeout=TIMEOUT)) in ACCEPTABLE


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=latent_requests)
def test_hostile_latent_requests(
    stub: pb_grpc.OwnerServiceStub, request: pb.SampleLatentsRequest
) -> None:
    status = _status(lambda: list(stub.SampleLatents(request, timeout=TIMEOUT)))
    assert status in ACCEPTABLE
    if status is grpc.StatusCode.OK:
        assert 1 <= request.rows <= 512 and 1 <= len(request.request_id) <= 128


def test_the_daemon_still_answers_afterwards(stub: pb_grpc.OwnerServiceStub) -> None:
    manifest = stub.GetManifest(pb.GetManifestRequest(request_id="after"), timeout=TIMEOUT)
    assert manifest.latent_dim == 4
