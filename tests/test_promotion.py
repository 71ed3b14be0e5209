"""The promotion gate's decision, branch by branch, and rollback's check of the alias."""

from __future__ import annotations

import numpy as np
import pytest

from radcap.core.settings import PromotionSettings
from radcap.metrics.scores import ReportScores, score_reports
from radcap.registry.promotion import decide

CFG = PromotionSettings(bootstrap_samples=400)


def synthetic(cider: np.ndarray, clinical_tp: int = 0, clinical_fp: int = 0, clinical_fn: int = 0) -> ReportScores:
    """Per-report statistics made by hand: CIDEr per report and clinical counts spread over the reports."""
    n = len(cider)
    clinical = np.zeros((n, 3, 14), bool)
    for column, count in ((0, clinical_tp), (1, clinical_fp), (2, clinical_fn)):
        clinical[:count, column, 2] = True
    return ReportScores([str(i) for i in range(n)], np.ones((n, 10)), np.zeros(n), cider, None, None, clinical)


def test_first_model_and_same_version():
    base = synthetic(np.ones(50))
    assert decide("1", None, {"1": base}, CFG).promote
    same = decide("3", "3", {"3": base}, CFG)
    assert not same.promote and "already the champion" in same.reason


def test_clear_gain_is_promoted_with_its_interval():
    rng = np.random.default_rng(0)
    old = synthetic(rng.uniform(0, 1, 200), clinical_tp=50, clinical_fn=10)
    new = synthetic(old.cider + 0.2, clinical_tp=50, clinical_fn=10)
    decision = decide("2", "1", {"2": new, "1": old}, CFG)
    assert decision.promote and decision.gain["low"] > 0 and decision.gain["p_not_better"] == 0.0
    assert "95% interval +0.2000..+0.2000" in decision.reason


def test_gain_within_noise_is_refused():
    rng = np.random.default_rng(1)
    old = synthetic(rng.uniform(0, 1, 200))
    new = synthetic(old.cider + rng.normal(0.01, 0.3, 200))  # a little higher on average, mostly noise
    decision = decide("2", "1", {"2": new, "1": old}, CFG)
    assert not decision.promote and decision.gain["low"] < 0 < decision.gain["high"]
    assert "not better with 95% confidence" in decision.reason


def test_lower_primary_metric_is_refused():
    old = synthetic(np.full(100, 0.5))
    decision = decide("2", "1", {"2": synthetic(np.full(100, 0.4)), "1": old}, CFG)
    assert not decision.promote and decision.gain["delta"] < 0 and decision.gain["p_not_better"] == 1.0


def test_clinical_tolerance_refuses_a_better_scoring_model_that_loses_clinical_f1():
    old = synthetic(np.full(100, 0.5), clinical_tp=60, clinical_fn=10)
    new = synthetic(np.full(100, 0.9), clinical_tp=60, clinical_fp=30, clinical_fn=10)
    decision = decide("2", "1", {"2": new, "1": old}, CFG)
    assert not decision.promote and "clinical_micro_f1" in decision.reason and "loses more than 0.02" in decision.reason
    within = synthetic(np.full(100, 0.9), clinical_tp=60, clinical_fp=1, clinical_fn=10)
    assert decide("2", "1", {"2": within, "1": old}, CFG).promote


def test_a_hallucinating_candidate_is_refused_on_real_text():
    """The candidate copies each reference (higher CIDEr) but adds findings nobody reported; the champion
    says the same findings as the reference in other words (lower CIDEr, clinically right)."""
    findings = ["left pleural effusion", "right upper lobe nodule", "cardiomegaly", "basilar atelectasis"]
    references, champion, candidate = {}, {}, {}
    for i in range(80):
        a, b = findings[i % 4], findings[(i + 1) % 4]
        references[str(i)] = f"there is {a} and {b} on study {i % 9}."
        champion[str(i)] = f"{b}; also {a}."
        candidate[str(i)] = f"there is {a} and {b} on study {i % 9}. pneumothorax. rib fracture."
    scores = {
        "2": score_reports(references, candidate, meteor=False),
        "1": score_reports(references, champion, meteor=False),
    }
    assert scores["2"].metric("CIDEr") > scores["1"].metric("CIDEr")
    decision = decide("2", "1", scores, CFG)
    assert not decision.promote and "clinical_micro_f1" in decision.reason, decision.reason


def test_rollback_refuses_when_the_alias_was_moved_by_hand(tmp_path):
    import mlflow

    from radcap.core.errors import RadcapError
    from radcap.registry.store import champion, set_champion
    from radcap.tasks.promote import restore_previous

    name, client = "radcap-rollback-test", mlflow.MlflowClient()
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source=str(tmp_path))
    set_champion(name, "1")
    set_champion(name, "2")
    client.set_registered_model_alias(name, "champion", "3")  # moved outside radcap
    with pytest.raises(RadcapError, match="moved outside radcap"):
        restore_previous.fn(name, "champion")
    assert champion(name) == "3"
    client.set_registered_model_alias(name, "champion", "2")
    assert restore_previous.fn(name, "champion")["champion"] == "1" and champion(name) == "1"


def test_promotion_on_the_test_split_is_refused_everywhere(tmp_path):
    """The gate decides on val; a setting, an environment variable or an option that puts it on test is refused."""
    from pydantic import ValidationError

    from tests.conftest import run_cli_here

    with pytest.raises(ValidationError, match="never on test"):
        PromotionSettings(split="test")
    (tmp_path / "reports.parquet").write_bytes(b"")
    done = run_cli_here("promote", "--data", str(tmp_path), "--split", "test")
    assert done.returncode == 2 and "promotion decides on val and never on test" in done.stderr, done.stderr
    done = run_cli_here("promote", "--data", str(tmp_path), env={"RADCAP_PROMOTION__SPLIT": "test"})
    assert done.returncode == 2 and "never on test" in done.stderr and "Traceback" not in done.stderr, done.stderr
