"""A retry racing a failing attempt at the same request id is answered and charged once.

A slow call (Evaluate, a large Decode) can outlive the client's deadline; the client then retries
under the same id while the first attempt still computes. If the first attempt then fails (past
the deadline, say), it refunds the request; the retry, already past its reservation, must still
get its answer, charged once, not an internal error. The servicer here is gated by events so the
interleaving is exact; identity, metering and the ledger are the daemon's own.
"""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from conftest import CLIENT_NAME, write_policy
from fair4free.common.codec import tensor_to_proto
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.tls import channel_credentials, client_identity_uri
from fair4free.data_owner.access import MeteringInterceptor
from fair4free.data_owner.interceptors import ErrorMappingInterceptor, IdentityInterceptor
from fair4free.data_owner.ledger import Ledger
from fair4free.data_owner.pki import PkiLayout
from fair4free.data_owner.policy import PolicyFile
from fair4free.data_owner.server_tls import server_credentials
from fair4free.v1 import fair4free_pb2 as pb
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

ROWS = 3
WAIT = 30


class _Gated(pb_grpc.OwnerServiceServicer):
    """Decode that lets the test decide when each attempt finishes, and how."""

    def __init__(self) -> None:
        self.entered = [threading.Event(), threading.Event()]
        self.go = [threading.Event(), threading.Event()]
        self._attempts = 0
        self._lock = threading.Lock()

    def Decode(self, request: Any, context: grpc.ServicerContext) -> pb.DecodeResponse:  # noqa: N802
        with self._lock:
            attempt, self._attempts = self._attempts, self._attempts + 1
        self.entered[attempt].set()
        assert self.go[attempt].wait(WAIT)
        if attempt == 0:
            raise Fair4FreeError(ErrorCode.DEADLINE_EXCEEDED, "the first attempt ran too long")
        return pb.DecodeResponse(outputs=tensor_to_proto(np.ones((ROWS, 2), np.float32)))


def test_a_retry_outliving_a_failed_first_attempt_is_answered_and_charged_once(
    tmp_path: Path, pki_dir: PkiLayout
) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    policy = PolicyFile(write_policy(tmp_path / "policy.toml", {"Decode": 100}))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[
            ErrorMappingInterceptor(),
            IdentityInterceptor(None),
            MeteringInterceptor(policy, ledger),
        ],
    )
    gated = _Gated()
    pb_grpc.add_OwnerServiceServicer_to_server(gated, server)
    files = pki_dir.server_files()
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(ca=files.ca, cert=files.cert, key=files.key)
    )
    server.start()
    client = pki_dir.client_files(CLIENT_NAME)
    credentials = channel_credentials(ca=client.ca, cert=client.cert, key=client.key)
    request = pb.DecodeRequest(
        request_id="slow-1",
        latents=tensor_to_proto(np.zeros((ROWS, 4), np.float32)),
        sensitive=tensor_to_proto(np.zeros(ROWS, np.int64)),
    )
    outcomes: list[Any] = [None, None]

    def attempt(index: int) -> None:
        try:
            outcomes[index] = stub.Decode(request, timeout=WAIT)
        except grpc.RpcError as exc:
            outcomes[index] = exc

    try:
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            stub = pb_grpc.OwnerServiceStub(channel)
            threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
            threads[0].start()
            assert gated.entered[0].wait(WAIT)  # the first attempt is charged and computing
            threads[1].start()
            assert gated.entered[1].wait(WAIT)  # the retry found the charge and computes too
            gated.go[0].set()
            threads[0].join(WAIT)  # the first attempt failed and refunded the request
            assert outcomes[0].code() is grpc.StatusCode.DEADLINE_EXCEEDED
            gated.go[1].set()
            threads[1].join(WAIT)
        assert isinstance(outcomes[1], pb.DecodeResponse), outcomes[1]
        assert outcomes[1].outputs.shape == [ROWS, 2]
        assert ledger.used(client_identity_uri(CLIENT_NAME), "Decode") == ROWS
    finally:
        server.stop(0).wait()
        ledger.close()
