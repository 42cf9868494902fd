"""Building and running the daemon: one factory that returns the server and its bound port.

mTLS is not optional here: the only way to build a server is with credentials that require a
client certificate. Tests bind ``127.0.0.1:0`` and read the port back.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from concurrent import futures
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.common.revocation import RevocationList
from fair4free.common.tls import TlsFiles
from fair4free.data_owner.access import BudgetView, MeteringInterceptor, PolicyInterceptor
from fair4free.data_owner.audit_interceptor import AuditInterceptor, ServedModel
from fair4free.data_owner.audit_keys import PRIVATE_KEY_FILE, generate_signing_key, load_signing_key
from fair4free.data_owner.audit_log import AuditLog
from fair4free.data_owner.deadline import (
    DeadlineInterceptor,
    UploadDeadlineInterceptor,
    check_max_call_seconds,
)
from fair4free.data_owner.interceptors import ErrorMappingInterceptor, IdentityInterceptor
from fair4free.data_owner.latent_release import LatentReleaseSettings
from fair4free.data_owner.latent_sources import open_latent_source
from fair4free.data_owner.ledger import Ledger
from fair4free.data_owner.owner_evaluation import EvaluationSettings, OwnerEvaluator
from fair4free.data_owner.policy import DEFAULT_RATE_PER_MINUTE, PolicyFile
from fair4free.data_owner.rate_limit import RateLimiter
from fair4free.data_owner.registry import Teacher
from fair4free.data_owner.server_tls import server_credentials
from fair4free.data_owner.servicer import OwnerServicer
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = "fair4free.v1.OwnerService"
LEDGER_FILE = "ledger.sqlite"
AUDIT_DIR = "audit"
AUDIT_KEY_DIR = "audit-key"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Daemon settings, validated once when the command line is read."""

    policy: Path
    state_dir: Path
    crl: Path | None = None
    server_id: str = field(default_factory=socket.gethostname)
    audit_checkpoint_every: int = 100
    listen: str = "127.0.0.1:50051"
    max_rows_per_call: int = 4096
    max_workers: int = 8
    max_message_bytes: int = 16 * 1024 * 1024
    seed: int | None = None
    grace_seconds: float = 5.0
    # Connections are closed after this long (with a grace period for calls in flight), so a
    # client reconnects and presents its current, possibly rotated or revoked, certificate.
    max_connection_age_seconds: float = 600.0
    # The most one call's work may take, whatever deadline the client sent (a shorter one wins).
    max_call_seconds: float = 30.0
    # What SampleLatents releases, and under which guarantee (docs/privacy.md).
    latent_release: LatentReleaseSettings = field(default_factory=LatentReleaseSettings)
    # The table the teacher was trained from; its recorded hold-out is what Evaluate scores
    # against. None: Evaluate is not served.
    evaluation_data: Path | None = None
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"--listen must be HOST:PORT, got {self.listen!r}"
            )
        if not 1 <= self.max_rows_per_call <= 1_000_000:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                f"max rows per call must be 1..1000000, got {self.max_rows_per_call}",
            )
        if self.max_workers < 1:
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, "max workers must be at least 1")
        check_max_call_seconds(self.max_call_seconds)
        if self.evaluation_data is not None and self.evaluation.min_rows > self.max_rows_per_call:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID,
                f"evaluation min rows ({self.evaluation.min_rows}) exceed max rows per call "
                f"({self.max_rows_per_call}): no Evaluate call could be answered",
            )


@dataclass(frozen=True, kw_only=True)
class OwnerDaemon:
    """A started daemon: the gRPC server, its bound port, and the state it must close."""

    server: grpc.Server
    port: int
    ledger: Ledger
    audit: AuditLog

    def stop(self, grace_seconds: float | None = None) -> None:
        """Let in-flight calls finish, then close the ledger and the audit log (never before)."""
        self.server.stop(grace_seconds).wait()
        self.ledger.close()
        self.audit.close()


def build_server(teacher: Teacher, *, tls: TlsFiles, config: ServerConfig) -> OwnerDaemon:
    """A started daemon with the owner service and standard health checking.

    Interceptors, outermost first: errors become statuses; a request stream (Evaluate) that is
    still open past the per-call limit is cut off; every call is audited; the peer must
    name a consumer; the policy must grant the call (deny by default), within rate and row cap;
    rows are charged; the work on the answer is bounded in time. The server certificate is
    re-read when it is renewed (``server_tls``).
    """
    policy = PolicyFile(config.policy)
    evaluator = (
        None
        if config.evaluation_data is None
        else OwnerEvaluator.load(teacher, config.evaluation_data, config.evaluation)
    )
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Fair4FreeError(
            ErrorCode.OUTPUT_UNWRITABLE, f"cannot create state directory {config.state_dir}: {exc}"
        ) from None
    latents = open_latent_source(teacher, config.latent_release, config.state_dir)
    revocations = None if config.crl is None else RevocationList.load(config.crl, tls.ca)
    credentials = server_credentials(ca=tls.ca, cert=tls.cert, key=tls.key)
    with ExitStack() as on_failure:  # what opens here is closed again if the start fails
        audit = open_audit_log(config)
        on_failure.callback(audit.close)
        ledger = Ledger.open(config.state_dir / LEDGER_FILE)
        on_failure.callback(ledger.close)
        served = ServedModel(
            server_id=config.server_id, model_id=teacher.model_id, model_hash=teacher.content_hash
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers),
            interceptors=[
                ErrorMappingInterceptor(),
                UploadDeadlineInterceptor(config.max_call_seconds),
                AuditInterceptor(audit, served),
                IdentityInterceptor(revocations),
                PolicyInterceptor(policy, RateLimiter(DEFAULT_RATE_PER_MINUTE)),
                MeteringInterceptor(policy, ledger),
                DeadlineInterceptor(config.max_call_seconds),
            ],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", int(config.grace_seconds * 1000)),
            ],
            maximum_concurrent_rpcs=4 * config.max_workers,
        )
        servicer = OwnerServicer(
            teacher,
            budgets=BudgetView(policy, ledger),
            max_rows_per_call=config.max_rows_per_call,
            seed=config.seed,
            latents=latents,
            evaluator=evaluator,
        )
        pb_grpc.add_OwnerServiceServicer_to_server(servicer, server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        try:
            port = server.add_secure_port(config.listen, credentials)
        except RuntimeError as exc:
            raise Fair4FreeError(
                ErrorCode.CONFIG_INVALID, f"cannot listen on {config.listen}: {exc}"
            ) from None
        if port == 0:
            raise Fair4FreeError(ErrorCode.CONFIG_INVALID, f"cannot listen on {config.listen}")
        server.start()
        on_failure.pop_all()
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return OwnerDaemon(server=server, port=port, ledger=ledger, audit=audit)


def open_audit_log(config: ServerConfig) -> AuditLog:
    """The daemon's audit log in ``<state>/audit``, signed by ``<state>/audit-key`` (made once)."""
    key_dir = config.state_dir / AUDIT_KEY_DIR
    key_path = key_dir / PRIVATE_KEY_FILE
    if not key_path.exists():
        files = generate_signing_key(key_dir)
        logger.info("generated the audit signing key; verifiers need %s", files.public_key)
    return AuditLog.open(
        config.state_dir / AUDIT_DIR,
        signing_key=load_signing_key(key_path),
        checkpoint_every=config.audit_checkpoint_every,
    )


def run_until_signalled(daemon: OwnerDaemon, *, grace_seconds: float) -> None:
    """Block until SIGTERM or SIGINT, then let in-flight calls finish within the grace period."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        daemon.stop(grace_seconds)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("stopped")
