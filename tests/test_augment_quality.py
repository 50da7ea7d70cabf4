"""Answer quality checks on hand-written good and bad answers, and on the rules engine's answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bleg.augment.answer import Answer, parse_answer
from bleg.augment.describe import DescribeConfig, describe_batch
from bleg.augment.engines import EngineConfig, Request
from bleg.augment.engines.base import SamplingConfig, attempt_temperature
from bleg.augment.engines.rules import RulesEngine
from bleg.augment.prompt import PROMPTS
from bleg.augment.quality import QualityConfig, check_quality, reason_of
from bleg.augment.stages import parse_stage
from fmgnn.cohort import Cohort

INSTRUCTIONS = list(PROMPTS["v1"].instructions)
EXAMPLE_PROMPT = list(PROMPTS["v2"].instructions)

DESCRIPTION = {
    "global_efficiency": 0.433, "local_efficiency": 0.61, "clustering": 0.497, "characteristic_path_length": 2.87,
    "modularity": 0.449, "hubs": [{"region": "Cingulum_Mid_R", "degree": 20, "strength": 9.1},
                                  {"region": "Insula_R", "degree": 18, "strength": 8.0}],
    "strongest_connections": [{"a": "Precuneus_L", "b": "Precuneus_R", "r": 0.9}],
    "networks": {"default": 0.41, "limbic": 0.2},
}


def verdict(features: list[str], conclusion: str, **settings) -> str | None:
    reason = check_quality(Answer(features, conclusion, None), DESCRIPTION, INSTRUCTIONS, QualityConfig(**settings))
    return reason_of(reason)


@pytest.mark.parametrize("features, conclusion", [
    (["hubs in the right mid cingulum and insula", "modularity Q 0.45"],
     "A modular network organised around cingulate and insular hubs."),
    (["strong precuneus coupling across hemispheres"], "Default-network coupling dominates."),
    (["global efficiency of 0.43"], "Integration is moderate, with limbic coupling low."),
])
def test_good_answers_pass(features, conclusion):
    assert verdict(features, conclusion) is None


@pytest.mark.parametrize("features, conclusion, reason", [
    (["short strings"], "One or two sentences", "copies_prompt"),  # the instructions, as written
    (["insula hub"], "Describe the key features of this brain network", "copies_prompt"),
    (["insula"], " ".join(["bidirectional"] * 40), "repetition"),
    (["insula", "insula cortex"], "hub to hub, hub to hub, hub to hub, hub to hub, hub to hub, hub to hub",
     "repetition"),
    (["functional connectivity", "brain regions"], "This network is highly interconnected.", "generic"),
    (["precentral", "fasciculitis"], "It regulates behaviour through the prefrontal cortex.", "generic"),
    (["global efficiency 0.91"], "Integration around the insula.", "wrong_measure"),
    (["insula hub"], "The modularity of 0.12 says the network is not modular.", "wrong_measure"),
])
def test_bad_answers_are_rejected_with_their_reason(features, conclusion, reason):
    assert verdict(features, conclusion) == reason


def test_an_answer_that_copies_the_worked_example_is_rejected():
    example = json.loads(PROMPTS["v2"].instructions[2])
    reason = check_quality(Answer(example["key_features"], example["conclusion"], None), DESCRIPTION,
                           EXAMPLE_PROMPT, QualityConfig())
    assert reason_of(reason) == "copies_prompt"
    own = Answer(["hubs in Cingulum_Mid_R and Insula_R"], "Organised around cingulate hubs.", None)
    assert check_quality(own, DESCRIPTION, EXAMPLE_PROMPT, QualityConfig()) is None


def test_thresholds_are_settings():
    looping = (["insula"], "insula insula insula insula")
    assert verdict(*looping) is None
    assert verdict(*looping, max_word_repeats=3) == "repetition"
    assert verdict(["functional connectivity"], "Interconnected.", check=False) is None
    assert verdict(["global efficiency 0.47"], "Insula hub.") is None  # within 10% of 0.433
    assert verdict(["global efficiency 0.47"], "Insula hub.", measure_tolerance=0.05) == "wrong_measure"


@pytest.mark.parametrize("source", ["nmda", "synthetic"])
def test_rules_engine_answers_pass_every_check(nmda_cohort, tmp_path, source):
    """The reference: the rules engine states only the subject's own facts, for every NMDA subject and
    for a synthetic cohort in which one subject's three hubs include both Frontal_Mid_Orb regions."""
    if source == "synthetic":
        from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic

        ingest_synthetic(tmp_path / "c.parquet", SyntheticConfig(n_subjects=30, n_timepoints=40, store="fc", seed=9))
    cohort = Cohort(nmda_cohort if source == "nmda" else tmp_path / "c.parquet")
    descriptions = describe_batch(cohort.fc(list(range(len(cohort)))), cohort.metadata, DescribeConfig())
    answers = RulesEngine(EngineConfig()).generate([Request("s", "p", d) for d in descriptions])
    rejected = [check_quality(parse_answer(a.text), d, INSTRUCTIONS, QualityConfig())
                for a, d in zip(answers, descriptions)]
    assert rejected == [None] * len(cohort)


def test_parse_stage_keeps_a_rejected_answer_as_an_error_row_with_its_reason():
    good = json.dumps({"key_features": ["insula hub"], "conclusion": "Modular, around the insula."})
    copied = json.dumps({"key_features": ["short strings"], "conclusion": "One or two sentences"})
    batch = {"scan_id": np.array(["a", "b"], dtype=object), "raw_output": np.array([good, copied], dtype=object),
             "engine_error": np.array([None, None], dtype=object),
             "description": np.array([json.dumps(DESCRIPTION)] * 2, dtype=object)}
    rows = parse_stage(batch, prompt="v1").to_pylist()  # "short strings" is v1's instruction text
    assert rows[0]["error"] is None and rows[0]["conclusion"] == "Modular, around the insula."
    assert rows[1]["error"].startswith("copies_prompt:") and rows[1]["conclusion"] is None
    assert "description" not in rows[0]  # between stages only


def test_a_retry_samples_instead_of_repeating_the_greedy_answer():
    sampling = SamplingConfig(temperature=0.0, seed=5)
    assert attempt_temperature(sampling, 5) == 0.0 and attempt_temperature(sampling, 6) == 0.7
    assert attempt_temperature(SamplingConfig(temperature=0.9, seed=5), 6) == 0.9


def test_cohort_figures_count_reasons_and_see_identical_texts(nmda_cohort):
    import pyarrow as pa

    from bleg.augment.cohort_quality import cohort_quality

    cohort = Cohort(nmda_cohort)
    ids = cohort.scan_ids().tolist()[:6]
    same = (["insula hub"], "A modular network around the insula.")
    rows = pa.table({
        "scan_id": ids, "key_features": [same[0]] * 4 + [None, None], "conclusion": [same[1]] * 4 + [None, None],
        "error": [None] * 4 + ["generic: names nothing", "invalid or truncated JSON"]})
    figures = cohort_quality(rows, cohort, DescribeConfig())
    assert figures["rejected_share"]["generic"] == pytest.approx(1 / 6, abs=1e-4)
    assert figures["rejected_share"]["invalid_answer"] == pytest.approx(1 / 6, abs=1e-4)
    assert figures["distinct_conclusions_share"] == 0.25 and figures["distinct_key_features_share"] == 0.25
    assert figures["mean_pairwise_similarity"] == pytest.approx(1.0, abs=1e-4)  # four copies of one text
    assert figures["rules_engine_distinct_share"] == 1.0 and figures["rules_engine_similarity"] < 0.99


def test_rules_engine_rows_are_their_own_reference(nmda_cohort):
    """For the rules engine's own output the reference texts are the texts themselves: encoded once, the
    same figures as the general path, which describes and answers them again."""
    import pyarrow as pa

    from bleg.augment.cohort_quality import cohort_quality

    cohort = Cohort(nmda_cohort)
    ids = cohort.scan_ids().tolist()[:5]
    descriptions = describe_batch(cohort.fc(list(range(5))), cohort.metadata, DescribeConfig())
    answers = [parse_answer(g.text) for g in RulesEngine(EngineConfig()).generate(
        [Request("", "", d) for d in descriptions])]
    rows = {"scan_id": ids, "key_features": [a.key_features for a in answers],
            "conclusion": [a.conclusion for a in answers], "error": [None] * 5}
    general = cohort_quality(pa.table(rows), cohort, DescribeConfig())
    shortcut = cohort_quality(pa.table(rows | {"engine": ["rules"] * 5}), cohort, DescribeConfig())
    assert shortcut == general and general["rules_engine_similarity"] == general["mean_pairwise_similarity"]


def test_a_nan_engine_error_from_ray_data_is_no_error():
    """Ray Data types an all-None column as float; the row must keep its answer and stay valid."""
    good = json.dumps({"key_features": ["insula hub"], "conclusion": "Modular, around the insula."})
    batch = {"scan_id": np.array(["a"], dtype=object), "raw_output": np.array([good], dtype=object),
             "engine_error": np.array([np.float32("nan")]), "description": np.array([json.dumps(DESCRIPTION)], dtype=object)}
    row = parse_stage(batch).to_pylist()[0]
    assert row["error"] is None and row["key_features"] == ["insula hub"]
