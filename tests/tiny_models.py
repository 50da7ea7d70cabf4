"""Tiny real models built locally (no hub): a Llama-architecture causal LM and its BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    '{"key_features": ["high global integration", "hubs in Insula_L"], "conclusion": "A modular network."}',
    "You are a neuroscientist who reads functional brain networks. Answer with JSON only.",
    "Dataset: synthetic. Task: control vs patient. Atlas: AAL-90 with 90 regions.",
    "Whole-graph measures: global efficiency 0.512, modularity Q 0.401 with 4 communities.",
    "Hub regions (degree, strength): Precentral_L (23, 11.2); Strongest connections: Insula_L-Insula_R r=0.9.",
]


def build_tiny_llama(folder: Path, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Save a 2-layer Llama with head_dim 32 (vLLM's CPU kernel needs >= 32) and a trained BPE tokenizer.

    At the default ``initializer_range`` its attention is nearly uniform, so its answers hardly depend on
    token positions; at 0.1 they do (a test of position bookkeeping needs that)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
