"""What the manifest tells a consumer about privacy: structured guarantees, one sentence each.

The guarantees come from two places: the model directory (a DP-SGD teacher records what its
training spent under ``metadata["privacy"]["teacher"]``) and the running daemon (the latent
release mechanism, whose epsilon grows with every row released). This module only reads and
words them; it computes no privacy loss itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from fair4free.common.codec import PrivacyGuarantee
from fair4free.common.errors import ErrorCode, Fair4FreeError

LatentMode = Literal["posterior", "gaussian", "prior"]

NO_TEACHER_GUARANTEE: Final = (
    "The teacher was trained without differential privacy: no formal guarantee covers its weights "
    "or Decode answers."
)
LATENT_SENTENCES: Final[Mapping[str, str]] = {
    "posterior": (
        "Latent samples are posterior draws of randomly chosen training rows and carry no formal "
        "guarantee."
    ),
    "prior": "Latent samples are drawn from the N(0, I) prior and read no training row.",
    "gaussian": (
        "Latent samples are clipped posterior means of training rows plus calibrated Gaussian "
        "noise; every row released to any caller is charged to the latent_release guarantee."
    ),
}


def teacher_guarantee(metadata: Mapping[str, Any]) -> PrivacyGuarantee | None:
    """The DP-SGD guarantee a model directory records, or None for a teacher trained without."""
    privacy = metadata.get("privacy")
    if privacy is None:
        return None
    try:
        teacher = privacy["teacher"]
        epsilon = float(teacher["epsilon"])
        return PrivacyGuarantee(
            scope="teacher",
            mechanism=str(teacher["mechanism"]),
            epsilon=epsilon,
            delta=float(teacher["delta"]),
            epsilon_limit=epsilon,
            adjacency=str(teacher["adjacency"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Fair4FreeError(
            ErrorCode.ARTIFACT_CORRUPT, f"model metadata 'privacy' is malformed: {exc}"
        ) from None


def privacy_statement(guarantees: Sequence[PrivacyGuarantee], latent_mode: LatentMode) -> str:
    """One sentence per part of the service, so nobody reads a guarantee into a part without one."""
    sentences = []
    teacher = next((g for g in guarantees if g.scope == "teacher"), None)
    if teacher is None:
        sentences.append(NO_TEACHER_GUARANTEE)
    else:
        sentences.append(
            f"The teacher was trained with {teacher.mechanism}: (epsilon={teacher.epsilon:.3g}, "
            f"delta={teacher.delta:.3g})-differential privacy for {teacher.adjacency}. Decode "
            "answers are post-processing of those weights and cost no further privacy. The table "
            "encoding in this manifest (categories, numeric quantile knots with each minimum and "
            "maximum, p(s)) was computed from the training rows without differential privacy."
        )
    sentences.append(LATENT_SENTENCES[latent_mode])
    release = next((g for g in guarantees if g.scope == "latent_release"), None)
    if release is not None:
        sentences.append(
            f"Latent release so far: (epsilon={release.epsilon:.3g}, delta={release.delta:.3g}) "
            f"for {release.adjacency}, of at most epsilon={release.epsilon_limit:.3g}."
        )
    return " ".join(sentences)
