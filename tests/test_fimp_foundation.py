"""FIMP with a whole foundation model: self-loops reproduce the model, edges match a per-edge loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fimp.foundation import FIMPFoundationConv, FoundationConfig
from fimp.weights import CheckpointMismatch, load_foundation_weights


def self_loops(n: int) -> torch.Tensor:
    return torch.arange(n).repeat(2, 1)


def test_self_loop_messages_are_the_pretrained_vit_output():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                             image_size=8, patch_size=4)).eval()
    conv = FIMPFoundationConv(FoundationConfig(hidden=32, heads=4, layers=3, intermediate=64)).eval()
    load_foundation_weights(conv, vit.state_dict(), "vit")
    x = torch.randn(5, 7, 32)
    expected = x
    for layer in vit.layers:
        expected = layer(expected)
        expected = expected[0] if isinstance(expected, tuple) else expected
    expected = vit.layernorm(expected)
    torch.testing.assert_close(conv.node_outputs(x), expected, rtol=1e-5, atol=1e-5)
    # Through message passing: a self-loop's message is that output, then residual and projection.
    torch.testing.assert_close(conv(x, self_loops(5)), conv.update_proj(x + expected), rtol=1e-5, atol=1e-5)

    # The same weights under the names of ViT/ViTMAE checkpoint files on the hub (BrainLM's).
    hub_names = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
                 "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
                 "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    hub = {}
    for key, value in vit.state_dict().items():
        for new, old in hub_names.items():
            key = key.replace(new, old)
        hub["vit." + key.replace("layers.", "encoder.layer.")] = value
    from_hub = FIMPFoundationConv(FoundationConfig(hidden=32, heads=4, layers=3, intermediate=64)).eval()
    load_foundation_weights(from_hub, hub, "vit")
    torch.testing.assert_close(from_hub.node_outputs(x), expected, rtol=1e-5, atol=1e-5)


def test_bert_post_ln_and_torch_encoder_layouts_load_exactly():
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                hidden_act="gelu")).eval()
    conv = FIMPFoundationConv(FoundationConfig(hidden=32, heads=4, layers=2, intermediate=64, norm_first=False,
                                               final_norm=False, layer_norm_eps=bert.config.layer_norm_eps)).eval()
    load_foundation_weights(conv, bert.state_dict(), "bert")
    x = torch.randn(3, 6, 32)
    expected = bert.encoder(x).last_hidden_state
    torch.testing.assert_close(conv.node_outputs(x), expected, rtol=1e-5, atol=1e-5)

    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                                               activation="gelu"), num_layers=2).eval()
    conv = FIMPFoundationConv(FoundationConfig(hidden=32, heads=4, layers=2, intermediate=64, norm_first=False,
                                               final_norm=False, layer_norm_eps=1e-5)).eval()
    load_foundation_weights(conv, {f"transformer_encoder.{k}": v for k, v in encoder.state_dict().items()}, "torch")
    with torch.no_grad():
        torch.testing.assert_close(conv.node_outputs(x), encoder(x), rtol=1e-5, atol=1e-5)


def test_fast_layer_equals_a_per_edge_loop_in_float64():
    torch.manual_seed(2)
    conv = FIMPFoundationConv(FoundationConfig(hidden=16, heads=2, layers=2, intermediate=32,
                                               edge_chunk_size=5)).double()
    x = torch.randn(6, 4, 16, dtype=torch.float64, requires_grad=True)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 2, 5, 1, 3], [1, 2, 3, 4, 5, 0, 3, 0, 2, 1, 1]])
    fast = conv(x, edge_index)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), x)

    def reference(x: torch.Tensor) -> torch.Tensor:
        """Each edge on its own: j's hidden states by the model, then the cross-attention chain."""
        def states(z):
            out = [z]
            for layer in conv.layers[:-1]:
                out.append(layer.self_forward(out[-1]))
            return out
        summed = torch.zeros_like(x)
        for j, i in edge_index.t().tolist():
            z_j = states(x[j:j + 1])
            h = x[i:i + 1]
            for layer, z in zip(conv.layers, z_j):
                h = layer(h, *layer.keys_values(z))
            summed = summed + nn.functional.one_hot(torch.tensor(i), 6).double()[:, None, None] * conv.final_norm(h)
        degree = torch.bincount(edge_index[1], minlength=6).clamp(min=1).double()
        return conv.update_proj(x + summed / degree[:, None, None])

    slow = reference(x)
    (grad_slow,) = torch.autograd.grad(slow.square().sum(), x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_fast, grad_slow, rtol=1e-5, atol=1e-5)


def test_checkpoint_that_does_not_fit_names_the_key_and_shapes():
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             image_size=8, patch_size=4))
    wide = FIMPFoundationConv(FoundationConfig(hidden=32, heads=4, layers=2, intermediate=128))
    with pytest.raises(CheckpointMismatch, match=r"layers.0.fc1.weight: expected shape \(128, 32\), found \(64, 32\)"):
        load_foundation_weights(wide, vit.state_dict(), "vit")
    deep = FIMPFoundationConv(FoundationConfig(hidden=32, heads=4, layers=3, intermediate=64))
    with pytest.raises(CheckpointMismatch, match=r"'layers.2.attention.q_proj.weight' is missing"):
        load_foundation_weights(deep, vit.state_dict(), "vit")


@pytest.mark.parametrize("mode", ["frozen", "full", "lora"])
def test_finetune_modes_choose_what_trains(mode):
    from fimp.foundation import apply_finetune

    config = FoundationConfig(hidden=16, heads=2, layers=2, intermediate=32)
    conv = apply_finetune(FIMPFoundationConv(config, root=True), mode)
    trained = {n for n, p in conv.named_parameters() if p.requires_grad}
    own = {f"{proj}.{kind}" for proj in ("update_proj", "root_proj") for kind in ("weight", "bias")}
    assert own <= trained
    if mode == "full":
        assert trained == {n for n, _ in conv.named_parameters()}
    elif mode == "frozen":
        assert trained == own
    else:
        lora = trained - own
        assert lora and all("lora_" in n for n in lora)
        x = torch.randn(3, 4, 16)
        loss = conv(x, torch.tensor([[0, 1, 2], [1, 2, 0]])).sum()
        loss.backward()
        assert all(p.grad is not None for n, p in conv.named_parameters() if "lora_B" in n)


def test_pretrained_model_saves_as_hugging_face_vit_and_loads_into_fimp(tmp_path):
    from transformers import AutoModel

    from fimp.hf_export import load_token_weights, save_foundation
    from fimp.reconstruction import ReconstructionConfig, TokenModel

    torch.manual_seed(3)
    pretrained = TokenModel(ReconstructionConfig(kind="foundation", n_tokens=4, token_values=10,
                                                 foundation=FoundationConfig(hidden=32, heads=4, layers=2,
                                                                             intermediate=64))).eval()
    for p in pretrained.parameters():  # move off the initial values so that a missed copy shows
        p.data.add_(0.01 * torch.randn_like(p))
    save_foundation(pretrained, tmp_path / "fm")
    vit = AutoModel.from_pretrained(tmp_path / "fm")
    assert type(vit).__name__ == "ViTModel" and vit.config.num_hidden_layers == 2
    conv = FIMPFoundationConv(FoundationConfig(hidden=32, heads=4, layers=2, intermediate=64)).eval()
    load_foundation_weights(conv, vit.state_dict(), "vit")
    x = torch.randn(3, 4, 32)
    torch.testing.assert_close(conv.node_outputs(x), pretrained.convs[0].node_outputs(x))
    tokens = load_token_weights(tmp_path / "fm")
    torch.testing.assert_close(tokens["position"], pretrained.position)


def test_root_term_adds_the_node_alone_through_its_own_projection():
    """``root=True``: the neighbours' mean as before, plus the foundation model's reading of the node alone."""
    torch.manual_seed(0)
    config = FoundationConfig(hidden=16, heads=2, layers=2, intermediate=32)
    plain, rooted = FIMPFoundationConv(config).eval(), FIMPFoundationConv(config, root=True).eval()
    rooted.load_state_dict({**plain.state_dict(), **{k: v for k, v in rooted.state_dict().items() if "root" in k}})
    x, edges = torch.randn(4, 5, 16), torch.tensor([[1, 2, 3, 0], [0, 0, 1, 2]])
    expected = plain(x, edges) + rooted.root_proj(plain.node_outputs(x))
    torch.testing.assert_close(rooted(x, edges), expected, rtol=1e-5, atol=1e-5)
    assert plain.root_proj is None  # the layer of METHODS.md has no root term


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_fimp_job_starts_from_a_brainlm_style_vitmae_folder_and_trains_what_finetune_says(mode, small_synthetic,
                                                                                         tmp_path):
    """``pretrained=PATH`` on a ViTMAE pretraining checkpoint saved as BrainLM's is (``vit.`` encoder plus an
    MAE decoder), through ``fmgnn train fimp`` in this process; ``model.finetune`` decides what moves."""
    import json

    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from fmgnn.config import load_config
    from pipelines.fimp import FIMPJobConfig, run_fimp

    torch.manual_seed(0)
    brainlm = ViTMAEForPreTraining(ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                                decoder_num_attention_heads=2, decoder_intermediate_size=32,
                                                image_size=8, patch_size=4, num_channels=1))
    brainlm.save_pretrained(tmp_path / "brainlm")
    query = brainlm.state_dict()["vit.layers.0.attention.q_proj.weight"]  # the file holds the hub names
    run = tmp_path / "run"
    summary = run_fimp(load_config(FIMPJobConfig, None, [
        f"cohort={small_synthetic}", f"run_dir={run}", f"pretrained={tmp_path / 'brainlm'}",
        "models=[fimp_pretrained,mlp]", "seeds=[0]", "fmri.window=10", "fmri.n_windows=4", "fmri.k=4",
        "model.foundation={hidden: 32, heads: 4, layers: 1, intermediate: 64}", f"model.finetune={mode}",
        "optim.epochs=2", "ray.num_workers=0"]))
    assert summary["models"]["fimp_pretrained"]["r2"]["mean"] is not None
    state = torch.load(run / "fimp_pretrained" / "seed0" / "model.pt", weights_only=True)
    if mode == "frozen":
        torch.testing.assert_close(state["convs.0.layers.0.q_proj.weight"], query)  # untouched by training
    else:
        torch.testing.assert_close(state["convs.0.layers.0.q_proj.base_layer.weight"], query)
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in state.items())  # the adapters trained
    trained = json.loads((run / "fimp_pretrained" / "seed0.json").read_text())["n_parameters"]
    every = sum(v.numel() for k, v in state.items())
    layer = sum(v.numel() for k, v in state.items() if ".layers." in k and "lora_" not in k)
    assert trained == every - layer - 2 * 32  # the foundation layers and final LayerNorm did not train


def test_sinusoidal_positions_are_fixed_and_the_same_for_any_number_of_windows():
    from fimp.reconstruction import ReconstructionConfig, TokenModel, sinusoidal_positions

    table = sinusoidal_positions(6, 8)
    torch.testing.assert_close(table[:4], sinusoidal_positions(4, 8))  # a window's position, not the count
    assert table[0].tolist() == [0.0] * 4 + [1.0] * 4  # sin 0 and cos 0
    assert table[3, 0].item() == pytest.approx(torch.sin(torch.tensor(3.0)).item())  # frequency 1 first
    assert len({tuple(row.tolist()) for row in table}) == 6
    model = TokenModel(ReconstructionConfig(kind="foundation", n_tokens=6, token_values=5, position="sinusoidal",
                                            foundation=FoundationConfig(hidden=8, heads=2, layers=1, intermediate=16)))
    assert "position" not in model.state_dict() and "position" not in dict(model.named_parameters())


def test_a_model_pretrained_on_few_windows_with_one_map_runs_on_more_windows_with_a_map_each(tmp_path):
    """A sine-cosine model pretrained on 4 windows of 10 values with shared maps, loaded into tasks of 6
    windows: the per-token model gets the shared map at every position, so it predicts exactly what the
    shared model does; every weight that is not a token map is the pretrained one."""
    from fimp.hf_export import check_token_weights, load_foundation, save_foundation
    from fimp.reconstruction import ReconstructionConfig, TokenModel

    torch.manual_seed(5)
    shape = dict(kind="foundation", token_values=10, position="sinusoidal",
                 foundation=FoundationConfig(hidden=16, heads=2, layers=2, intermediate=32))
    pretrained = TokenModel(ReconstructionConfig(n_tokens=4, **shape))
    for p in pretrained.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    save_foundation(pretrained, tmp_path / "fm")

    shared_config = ReconstructionConfig(n_tokens=6, **shape)
    per_token_config = ReconstructionConfig(n_tokens=6, per_token=True, **shape)
    assert check_token_weights(tmp_path / "fm", per_token_config) == []
    shared = load_foundation(TokenModel(shared_config), tmp_path / "fm").eval()
    per_token = load_foundation(TokenModel(per_token_config), tmp_path / "fm").eval()
    assert per_token.embed.weight.shape == (6, 16, 10)
    x, mask = torch.randn(5, 6, 10), torch.rand(5, 6) < 0.3
    no_edges = torch.empty(2, 0, dtype=torch.long)
    torch.testing.assert_close(per_token(x, mask, no_edges), shared(x, mask, no_edges))
    torch.testing.assert_close(shared.mask_token, pretrained.mask_token)
    h = torch.randn(2, 6, 16)
    torch.testing.assert_close(shared.convs[0].node_outputs(h), pretrained.convs[0].node_outputs(h))
    # Learned positions start where the fixed table is: the same predictions, and only they then train.
    learned = load_foundation(TokenModel(ReconstructionConfig(n_tokens=6, per_token=True, **{
        **shape, "position": "learned"})), tmp_path / "fm").eval()
    assert isinstance(learned.position, nn.Parameter)
    torch.testing.assert_close(learned(x, mask, no_edges), shared(x, mask, no_edges))


def test_token_weights_that_do_not_fit_the_task_are_named(tmp_path):
    from fimp.hf_export import check_token_weights, save_foundation
    from fimp.reconstruction import ReconstructionConfig, TokenModel

    foundation = FoundationConfig(hidden=8, heads=2, layers=1, intermediate=16)
    save_foundation(TokenModel(ReconstructionConfig(kind="foundation", n_tokens=4, token_values=10,
                                                    foundation=foundation)), tmp_path / "learned")
    save_foundation(TokenModel(ReconstructionConfig(kind="foundation", n_tokens=4, token_values=10, per_token=True,
                                                    position="sinusoidal", foundation=foundation)), tmp_path / "maps")

    def reasons(folder: str, **task) -> str:
        return "; ".join(check_token_weights(tmp_path / folder, ReconstructionConfig(**{
            "n_tokens": 4, "token_values": 10, "foundation": foundation, **task})))

    assert reasons("learned") == "" and reasons("maps", per_token=True, position="sinusoidal") == ""
    assert "learned positions are for 4 windows, this task has 6" in reasons("learned", n_tokens=6)
    assert "model.position=learned" in reasons("learned", position="sinusoidal")
    assert reasons("maps", per_token=True) == ""  # learned positions start from the sine-cosine table
    assert "windows of 10 values, this task's have 20" in reasons("learned", token_values=20)
    assert "model.per_token=true" in reasons("maps", position="sinusoidal")
    assert "for 4 windows, this task has 5" in reasons("maps", per_token=True, position="sinusoidal", n_tokens=5)
