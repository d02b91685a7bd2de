"""Tiny transformers models built from configs (no hub download): Llama with GQA and GPT-2 (Conv1D)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB = 96
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """2 layers, hidden 32, 4 heads and 2 KV heads: k/v projections are rectangular (32 → 16)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def tiny_gpt2(seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    """2 layers, hidden 32, no dropout: c_attn (32 → 96), c_proj, c_fc are transformers Conv1D layers."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).to(dtype).eval()


MODELS = {"llama": (tiny_llama, LLAMA_TARGETS), "gpt2": (tiny_gpt2, GPT2_TARGETS)}


def token_batch(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    """Random token ids."""
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
