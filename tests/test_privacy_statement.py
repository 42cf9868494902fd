"""The manifest's privacy wording: what it claims must follow from the recorded guarantees."""

import pytest

from fair4free.common.codec import PrivacyGuarantee
from fair4free.common.errors import ErrorCode, Fair4FreeError
from fair4free.data_owner.privacy_statement import privacy_statement, teacher_guarantee


def test_a_teacher_without_privacy_metadata_claims_nothing() -> None:
    assert teacher_guarantee({"dataset": "adult"}) is None
    text = privacy_statement((), "posterior")
    assert "without differential privacy" in text
    assert "no formal guarantee" in text
    assert "epsilon" not in text


def test_a_dp_teacher_is_stated_with_its_numbers_and_post_processing() -> None:
    guarantee = teacher_guarantee(
        {
            "privacy": {
                "teacher": {
                    "mechanism": "dp-sgd",
                    "epsilon": 7.96,
                    "delta": 1e-5,
                    "adjacency": "add or remove one record",
                }
            }
        }
    )
    assert guarantee is not None
    assert (guarantee.epsilon, guarantee.epsilon_limit, guarantee.delta) == (7.96, 7.96, 1e-5)
    text = privacy_statement((guarantee,), "prior")
    assert "epsilon=7.96" in text and "delta=1e-05" in text
    assert "post-processing" in text
    assert "read no training row" in text


def test_the_latent_release_sentence_reports_spent_and_limit() -> None:
    release = PrivacyGuarantee(
        scope="latent_release",
        mechanism="gaussian",
        epsilon=0.5,
        delta=1e-6,
        epsilon_limit=4.0,
        adjacency="replacing one record",
    )
    text = privacy_statement((release,), "gaussian")
    assert "epsilon=0.5" in text and "at most epsilon=4" in text


def test_malformed_privacy_metadata_is_a_corrupt_artifact() -> None:
    with pytest.raises(Fair4FreeError, match="'privacy' is malformed") as caught:
        teacher_guarantee({"privacy": {"teacher": {"epsilon": "lots"}}})
    assert caught.value.code is ErrorCode.ARTIFACT_CORRUPT
