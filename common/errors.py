"""The one error catalog: each domain failure has a code, a gRPC status, an exit code and a hint.

Errors are raised with a precise one-line ``detail`` naming the bad thing (file, column, field,
value). The catalog adds the next step for the user. Servers send ``detail`` and the hint, never a
traceback; CLIs print them on one line and exit with the code's exit status.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

import grpc


class ExitCode(IntEnum):
    """Process exit statuses of the command-line tools, one per kind of failure."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    BAD_INPUT = 3
    INCOMPATIBLE_ARTIFACT = 4
    CONNECTION = 5
    REFUSED = 6
    INTERRUPTED = 7


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "an unexpected internal error; please report it with the log",
    ExitCode.USAGE: "the command line was malformed; see --help",
    ExitCode.BAD_INPUT: "an input file, column or value is unusable; the message names it",
    ExitCode.INCOMPATIBLE_ARTIFACT: "a model or student directory is damaged or too old/new",
    ExitCode.CONNECTION: "the other party could not be reached or the TLS handshake failed",
    ExitCode.REFUSED: "the other party refused the request (identity, policy, limits)",
    ExitCode.INTERRUPTED: "the run was interrupted; rerun the same command to resume",
}


class ErrorCode(Enum):
    """Domain error codes. Each member must have an entry in ``CATALOG``."""

    FILE_NOT_FOUND = "file_not_found"
    FILE_UNREADABLE = "file_unreadable"
    OUTPUT_UNWRITABLE = "output_unwritable"
    COLUMN_UNKNOWN = "column_unknown"
    COLUMN_UNSUPPORTED = "column_unsupported"
    SENSITIVE_CONSTANT = "sensitive_constant"
    TARGET_NOT_BINARY = "target_not_binary"
    SCHEMA_MISMATCH = "schema_mismatch"
    DATA_HOME_MISSING = "data_home_missing"
    DATASET_CORRUPT = "dataset_corrupt"
    CONFIG_INVALID = "config_invalid"
    ARTIFACT_VERSION = "artifact_version"
    ARTIFACT_CORRUPT = "artifact_corrupt"
    REQUEST_INVALID = "request_invalid"
    TENSOR_INVALID = "tensor_invalid"
    ROW_CAP_EXCEEDED = "row_cap_exceeded"
    BUDGET_EXHAUSTED = "budget_exhausted"
    RATE_LIMITED = "rate_limited"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    ANSWER_PRUNED = "answer_pruned"
    PRIVACY_SETTINGS_INVALID = "privacy_settings_invalid"
    PRIVACY_BUDGET_EXHAUSTED = "privacy_budget_exhausted"
    EVALUATION_UNAVAILABLE = "evaluation_unavailable"
    RELEASE_GATE_FAILED = "release_gate_failed"
    UNAUTHENTICATED = "unauthenticated"
    TLS_MATERIAL = "tls_material"
    SERVER_UNREACHABLE = "server_unreachable"
    SERVER_REFUSED = "server_refused"
    INTERRUPTED = "interrupted"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    AUDIT_KEY_INVALID = "audit_key_invalid"
    AUDIT_CHECKPOINT_INVALID = "audit_checkpoint_invalid"
    INTERNAL = "internal"


@dataclass(frozen=True, kw_only=True)
class CatalogEntry:
    """How one error code surfaces: over the wire, as a process exit, and what to do next."""

    status: grpc.StatusCode
    exit_code: ExitCode
    hint: str


CATALOG: dict[ErrorCode, CatalogEntry] = {
    ErrorCode.FILE_NOT_FOUND: CatalogEntry(
        status=grpc.StatusCode.NOT_FOUND,
        exit_code=ExitCode.BAD_INPUT,
        hint="check the path",
    ),
    ErrorCode.FILE_UNREADABLE: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="the file must be a comma-separated table with a header row",
    ),
    ErrorCode.OUTPUT_UNWRITABLE: CatalogEntry(
        status=grpc.StatusCode.INTERNAL,
        exit_code=ExitCode.BAD_INPUT,
        hint="choose a writable location with free space; nothing was overwritten",
    ),
    ErrorCode.COLUMN_UNKNOWN: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="name a column that exists in the table header",
    ),
    ErrorCode.COLUMN_UNSUPPORTED: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="drop the column or declare its type explicitly",
    ),
    ErrorCode.SENSITIVE_CONSTANT: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="the sensitive column needs at least two values to make anything fair",
    ),
    ErrorCode.TARGET_NOT_BINARY: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="only binary targets are supported; map the target to two classes first",
    ),
    ErrorCode.SCHEMA_MISMATCH: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="the table must have the columns of the schema it is compared with",
    ),
    ErrorCode.DATA_HOME_MISSING: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.BAD_INPUT,
        hint="pass --data-home or set FAIR4FREE_DATA_HOME to the folder holding the dataset",
    ),
    ErrorCode.DATASET_CORRUPT: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.BAD_INPUT,
        hint="replace the file with a fresh copy from its public source",
    ),
    ErrorCode.CONFIG_INVALID: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.USAGE,
        hint="fix the named setting",
    ),
    ErrorCode.ARTIFACT_VERSION: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.INCOMPATIBLE_ARTIFACT,
        hint="retrain or re-distill it with this version of fair4free",
    ),
    ErrorCode.ARTIFACT_CORRUPT: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.INCOMPATIBLE_ARTIFACT,
        hint="the directory is damaged or incomplete; retrain or restore it from a copy",
    ),
    ErrorCode.REQUEST_INVALID: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="fix the named request field",
    ),
    ErrorCode.TENSOR_INVALID: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="send a finite tensor whose dtype, shape and byte length agree with the manifest",
    ),
    ErrorCode.ROW_CAP_EXCEEDED: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="split the request into calls of at most the manifest's max_rows_per_call rows",
    ),
    ErrorCode.BUDGET_EXHAUSTED: CatalogEntry(
        status=grpc.StatusCode.RESOURCE_EXHAUSTED,
        exit_code=ExitCode.REFUSED,
        hint="ask the data owner for a larger budget",
    ),
    ErrorCode.RATE_LIMITED: CatalogEntry(
        status=grpc.StatusCode.RESOURCE_EXHAUSTED,
        exit_code=ExitCode.REFUSED,
        hint="slow down: retry after the wait the message names",
    ),
    ErrorCode.DEADLINE_EXCEEDED: CatalogEntry(
        status=grpc.StatusCode.DEADLINE_EXCEEDED,
        exit_code=ExitCode.REFUSED,
        hint="this attempt was not charged; ask for fewer rows per call, or ask the data owner "
        "to raise the daemon's --max-call-seconds",
    ),
    ErrorCode.ANSWER_PRUNED: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.REFUSED,
        hint="send the request again under a new request id; it is charged as a new request",
    ),
    ErrorCode.PRIVACY_SETTINGS_INVALID: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="choose epsilon > 0, delta < 1/rows and enough rows for that epsilon "
        "(see docs/privacy.md)",
    ),
    ErrorCode.PRIVACY_BUDGET_EXHAUSTED: CatalogEntry(
        status=grpc.StatusCode.RESOURCE_EXHAUSTED,
        exit_code=ExitCode.REFUSED,
        hint="the owner's latent release budget is spent; ask the owner for a new release budget "
        "or distill from the latents already received",
    ),
    ErrorCode.EVALUATION_UNAVAILABLE: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.REFUSED,
        hint="the owner serves Evaluate only when serve is started with --evaluation-data",
    ),
    ErrorCode.RELEASE_GATE_FAILED: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.REFUSED,
        hint="run `fair4free-owner release-check` for this model, or retrain it (e.g. with "
        "--dp-epsilon) until it passes the gate",
    ),
    ErrorCode.UNAUTHENTICATED: CatalogEntry(
        status=grpc.StatusCode.UNAUTHENTICATED,
        exit_code=ExitCode.REFUSED,
        hint="connect with a client certificate issued by the owner's CA",
    ),
    ErrorCode.TLS_MATERIAL: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.BAD_INPUT,
        hint="point to readable PEM files made by 'fair4free-owner pki'",
    ),
    ErrorCode.SERVER_UNREACHABLE: CatalogEntry(
        status=grpc.StatusCode.UNAVAILABLE,
        exit_code=ExitCode.CONNECTION,
        hint="check the address, that the daemon runs, and that both sides trust the same CA",
    ),
    ErrorCode.SERVER_REFUSED: CatalogEntry(
        status=grpc.StatusCode.PERMISSION_DENIED,
        exit_code=ExitCode.REFUSED,
        hint="ask the data owner to review your identity, policy and budget",
    ),
    ErrorCode.INTERRUPTED: CatalogEntry(
        status=grpc.StatusCode.CANCELLED,
        exit_code=ExitCode.INTERRUPTED,
        hint="rerun the same command to resume from the last checkpoint",
    ),
    ErrorCode.AUDIT_UNAVAILABLE: CatalogEntry(
        status=grpc.StatusCode.UNAVAILABLE,
        exit_code=ExitCode.INTERNAL,
        hint="the audit log cannot be written; the daemon stops answering until it can",
    ),
    ErrorCode.AUDIT_KEY_INVALID: CatalogEntry(
        status=grpc.StatusCode.FAILED_PRECONDITION,
        exit_code=ExitCode.BAD_INPUT,
        hint="point to the Ed25519 audit key in PEM (not a TLS key); generate one if there is none",
    ),
    ErrorCode.AUDIT_CHECKPOINT_INVALID: CatalogEntry(
        status=grpc.StatusCode.INVALID_ARGUMENT,
        exit_code=ExitCode.BAD_INPUT,
        hint="pass each audit checkpoint exactly as the daemon sent it, one per line",
    ),
    ErrorCode.INTERNAL: CatalogEntry(
        status=grpc.StatusCode.INTERNAL,
        exit_code=ExitCode.INTERNAL,
        hint="this is a bug; please report it with the log",
    ),
}


class Fair4FreeError(Exception):
    """A failure the user can act on: a catalogued code plus a precise one-line detail."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    @property
    def entry(self) -> CatalogEntry:
        """The catalog entry that says how this error surfaces."""
        return CATALOG[self.code]

    def public_message(self) -> str:
        """The one line shown to a user or sent over the wire: what is wrong, then what to do."""
        return f"{self.detail}; {self.entry.hint}"
