"""BLEG stage 2: graph tokens and text through one language model, the GCN and the LM trained together.

Sequence per subject: ``[R graph tokens][question][answer]``. The loss is the LM's cross-entropy on
the answer tokens only: next-token prediction for a causal LM, masked-token prediction for a
BERT-family encoder (a share of the answer tokens is masked each step).

.. math::
    \\mathcal{L} = -\\frac{1}{|A|} \\sum_{t \\in A} \\log p_{LM}(w_t \\mid \\mathrm{GCN}(G), q, w_{<t})

with ``A`` the answer positions (causal form; the masked form conditions on the unmasked tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from bleg.graph_encoder import GraphTokenEncoder
from bleg.language_model import LMKind, hidden_size
from fmgnn.cohort import CohortError

IGNORE = -100  # label value that transformers' losses skip


class GraphLanguageModel(nn.Module):
    """A graph token encoder feeding a Hugging Face LM through ``inputs_embeds``.

    Without an encoder the model reads text only (the teacher of the no-stage-2 ablation).
    """

    def __init__(self, encoder: GraphTokenEncoder | None, lm: nn.Module, kind: LMKind) -> None:
        super().__init__()
        if encoder is not None and encoder.config.out_channels != hidden_size(lm):
            raise CohortError(f"graph encoder width {encoder.config.out_channels} does not match the language "
                              f"model's embedding width {hidden_size(lm)} (graph_encoder.out_channels)")
        self.encoder = encoder
        self.lm = lm
        self.kind = kind

    def embed(self, graphs: Batch, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Graph tokens then text embeddings: (G, R + L, d) and the matching attention mask (G, R + L)."""
        tokens = self.encoder.tokens(graphs.x, graphs.edge_index, graphs.edge_weight, graphs.batch)  # (G, R, d)
        text = self.lm.get_input_embeddings()(input_ids)  # (G, L, d)
        graph_mask = torch.ones(tokens.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return torch.cat([tokens, text], dim=1), torch.cat([graph_mask, attention_mask], dim=1)

    def forward(self, graphs: Batch, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the answer tokens (labels other than ``IGNORE``)."""
        embeds, mask = self.embed(graphs, input_ids, attention_mask)
        graph_labels = torch.full((labels.shape[0], embeds.shape[1] - labels.shape[1]), IGNORE,
                                  dtype=labels.dtype, device=labels.device)
        labels = torch.cat([graph_labels, labels], 1)
        parts = bert_parts(self.lm) if self.kind == "masked" else None
        if parts is None:
            return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        # BERT family: the vocabulary head only at the masked positions (a third of the answer), not at
        # every graph and text position; the head was 40% of a MiniLM step on 2 cores.
        encoder, head = parts
        hidden = encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (G, S, d)
        chosen = labels != IGNORE  # (G, S)
        return nn.functional.cross_entropy(head(hidden[chosen]), labels[chosen])

    def last_hidden(self, graphs: Batch | None, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The LM's last hidden states (G, S, d) and mask (G, S); without ``graphs``, text only."""
        if graphs is None:
            embeds, mask = self.lm.get_input_embeddings()(input_ids), attention_mask
        else:
            embeds, mask = self.embed(graphs, input_ids, attention_mask)
        output = self.lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
        return output.hidden_states[-1], mask


def bert_parts(lm: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(encoder, MLM head)`` of a BERT masked LM (LoRA-wrapped or not); None for other architectures."""
    model = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    if hasattr(model, "bert") and hasattr(model, "cls"):
        return model.bert, model.cls
    return None


@dataclass
class TextEncoder:
    """Token ids and labels of ``[prompt][answer]`` for one tokenizer and LM kind."""

    tokenizer: object
    kind: LMKind
    max_text_length: int
    mlm_probability: float = 0.3

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.kind == "masked":
            return [self.tokenizer.cls_token_id, *self._ids(prompt), self.tokenizer.sep_token_id]
        return self._ids(prompt)

    def pair(self, prompt: str, answer: str, generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)``; labels are ``IGNORE`` outside the answer (masked LM: outside masked tokens)."""
        prompt_ids = self.prompt_ids(prompt)
        end = [self.tokenizer.sep_token_id] if self.kind == "masked" else [self.tokenizer.eos_token_id]
        room = self.max_text_length - len(prompt_ids) - len(end)
        if room < 1:
            raise CohortError(f"the prompt takes {len(prompt_ids)} tokens, more than lm.max_length allows "
                              "after the graph tokens; raise lm.max_length")
        answer_ids = self._ids(" " + answer)[:room] + [t for t in end if t is not None]
        ids = prompt_ids + answer_ids
        if self.kind == "causal":
            return ids, [IGNORE] * len(prompt_ids) + answer_ids
        # Masked LM: hide a share of the answer tokens (at least one) and predict them.
        chosen = torch.rand(len(answer_ids), generator=generator) < self.mlm_probability
        if not bool(chosen.any()):
            chosen[torch.randint(len(answer_ids), (1,), generator=generator)] = True
        labels = [IGNORE] * len(prompt_ids) + [t if c else IGNORE for t, c in zip(answer_ids, chosen.tolist())]
        masked = [self.tokenizer.mask_token_id if c else t for t, c in zip(answer_ids, chosen.tolist())]
        return prompt_ids + masked, labels

    def pad(self, sequences: list[list[int]], labels: list[list[int]] | None = None) -> dict[str, Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` (and ``labels``) tensors."""
        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
        }
        if labels is not None:
            batch["labels"] = torch.tensor([y + [IGNORE] * (width - len(y)) for y in labels])
        return batch
