"""Shared fixtures: real PKI material, a small trained teacher, a live mTLS daemon on loopback.

Also the daemon as a real subprocess, for tests that kill it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pandas as pd
import pytest

from fair4free.common.schema import TableSchema
from fair4free.common.tls import channel_credentials, client_identity_uri
from fair4free.consumer.client import ClientConfig, OwnerClient
from fair4free.consumer.distillation import DistillConfig, distill
from fair4free.data_owner import datasets
from fair4free.data_owner.pki import PkiLayout, init_pki, issue_client
from fair4free.data_owner.policy import render_policy
from fair4free.data_owner.registry import load_teacher
from fair4free.data_owner.server import ServerConfig, build_server
from fair4free.data_owner.train_pipeline import train_to_directory
from fair4free.data_owner.training import TrainingConfig
from fair4free.v1 import fair4free_pb2_grpc as pb_grpc

CLIENT_NAME = "test-consumer"
MAX_ROWS_PER_CALL = 512
UNLIMITED = {"SampleLatents": 10**9, "Decode": 10**9}
SMALL_DISTILLATION = DistillConfig(
    latent_rows=1024, decode_rows=1024, decoder_steps=80, batch_size=128
)


@dataclass(frozen=True)
class Cohort:
    train: pd.DataFrame
    test: pd.DataFrame
    schema: TableSchema


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    root = tmp_path_factory.mktemp("pki")
    layout = init_pki(root)
    issue_client(root, CLIENT_NAME)
    return layout


@pytest.fixture(scope="session")
def cohort() -> Cohort:
    dataset = datasets.make_cohort(1500, seed=0)
    train, test = datasets.split_table(dataset.frame, target=dataset.target, seed=0)
    return Cohort(train=train, test=test, schema=dataset.schema())


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, cohort: Cohort) -> Path:
    out = tmp_path_factory.mktemp("models") / "teacher"
    train_to_directory(
        cohort.train,
        cohort.schema,
        out=out,
        dataset_name="cohort",
        latent_dim=4,
        hidden=32,
        training=TrainingConfig(epochs=4, batch_size=128, seed=0),
    )
    return out


def write_policy(path: Path, budgets: dict[str, int], *, rate_per_minute: int = 100_000) -> Path:
    """A policy granting the test client every method with the given row budgets."""
    grant = {client_identity_uri(CLIENT_NAME): budgets}
    path.write_text(render_policy(grant, rate_per_minute=rate_per_minute))
    return path


@pytest.fixture(scope="session")
def server_address(
    tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path, pki_dir: PkiLayout
) -> Iterator[str]:
    state = tmp_path_factory.mktemp("daemon")
    config = ServerConfig(
        policy=write_policy(state / "policy.toml", UNLIMITED),
        state_dir=state,
        crl=pki_dir.crl,
        listen="127.0.0.1:0",
        max_rows_per_call=MAX_ROWS_PER_CALL,
        seed=0,
    )
    daemon = build_server(load_teacher(teacher_dir), tls=pki_dir.server_files(), config=config)
    yield f"127.0.0.1:{daemon.port}"
    daemon.stop(0)


def start_daemon(
    teacher_dir: Path, pki_dir: PkiLayout, state: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``fair4free-owner serve`` on ``state`` (policy in ``state/policy.toml``), once it serves.

    ``extra`` are further serve options. Its stderr goes to ``state/daemon.log``, so a daemon that
    refuses to (re)start says why.
    """
    ready = state / f"ready-{time.monotonic_ns()}"
    with (state / "daemon.log").open("ab") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "fair4free.data_owner", "serve", "--model", str(teacher_dir),
             "--pki", str(pki_dir.root), "--policy", str(state / "policy.toml"),
             "--state-dir", str(state), "--listen", "127.0.0.1:0", "--ready-file", str(ready),
             *extra],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            log = (state / "daemon.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"the daemon did not start:\n{log}")
        time.sleep(0.05)
    return process, ready.read_text()


StubFactory = Callable[[str], pb_grpc.OwnerServiceStub]


@pytest.fixture
def stub_factory(pki_dir: PkiLayout) -> Iterator[StubFactory]:
    """Stubs for the test client on fresh channels to an address, all closed after the test."""
    channels: list[grpc.Channel] = []

    def make(address: str) -> pb_grpc.OwnerServiceStub:
        files = pki_dir.client_files(CLIENT_NAME)
        credentials = channel_credentials(ca=files.ca, cert=files.cert, key=files.key)
        channels.append(grpc.secure_channel(address, credentials))
        return pb_grpc.OwnerServiceStub(channels[-1])

    yield make
    for channel in channels:
        channel.close()


@pytest.fixture
def client(server_address: str, pki_dir: PkiLayout) -> Iterator[OwnerClient]:
    config = ClientConfig(
        server=server_address, tls=pki_dir.client_files(CLIENT_NAME), timeout_seconds=20
    )
    with OwnerClient(config) as owner:
        yield owner


@pytest.fixture(scope="session")
def student_dir(
    tmp_path_factory: pytest.TempPathFactory, server_address: str, pki_dir: PkiLayout
) -> Path:
    out = tmp_path_factory.mktemp("students") / "student"
    config = ClientConfig(server=server_address, tls=pki_dir.client_files(CLIENT_NAME))
    with OwnerClient(config) as client:
        distill(client, out, SMALL_DISTILLATION)
    return out
