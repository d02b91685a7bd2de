"""The JORA demo (``nox -s demo`` or ``python -m jora_peft.demo``): CPU, no network, about a minute.

1. A small Llama-style causal LM built from a config is pretrained (all parameters) on text every Python
   installation has: the docstrings of standard-library modules.
2. It is adapted to a different text (Python's language-reference topics, ``pydoc_data.topics``) with JORA
   and, in the same run, with LoRA r8; held-out losses before/after, trainable parameters and times are
   printed as a table.
3. The JORA adapter is saved, reloaded with ``PeftModel.from_pretrained`` into a fresh copy of the base
   model, merged, and merged and unmerged outputs are compared.

``--model`` (any Hugging Face causal-LM path or id) and ``--data`` (a text file) run the same adaptation on
real models and data; pretraining is skipped for a given model.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

import jora_peft
from jora_peft import JoraConfig
from peft import LoraConfig, PeftModel, get_peft_model

PRETRAIN_MODULES = (
    "collections", "itertools", "functools", "os", "pathlib", "re", "json", "argparse", "logging", "datetime",
    "string", "textwrap", "statistics", "random", "heapq", "bisect", "typing", "dataclasses", "enum", "csv",
    "shutil", "subprocess", "threading", "socket", "email", "http", "unittest", "decimal", "fractions", "math",
)  # fmt: skip


@dataclass
class Corpus:
    """Token ids of one text, split into training and held-out parts."""

    train: torch.Tensor
    held_out: torch.Tensor


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256): needs no download."""

    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(list(text.encode("utf-8", errors="ignore")), dtype=torch.long)


def stdlib_docstrings() -> str:
    """Docstrings of standard-library modules and their public members (the pretraining text)."""
    chunks: list[str] = []
    for name in PRETRAIN_MODULES:
        module = importlib.import_module(name)
        chunks.append(inspect.getdoc(module) or "")
        with warnings.catch_warnings():  # touching deprecated aliases (typing.io, ...) only reads their docs
            warnings.simplefilter("ignore", DeprecationWarning)
            for member_name, member in inspect.getmembers(module):
                if not member_name.startswith("_") and (doc := inspect.getdoc(member)):
                    chunks.append(doc)
    return "\n\n".join(dict.fromkeys(chunks))


def language_reference() -> str:
    """Python's language-reference topics (``pydoc_data.topics``): the adaptation text."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def make_corpus(ids: torch.Tensor, held_out_fraction: float = 0.1) -> Corpus:
    cut = int(len(ids) * (1 - held_out_fraction))
    return Corpus(train=ids[:cut], held_out=ids[cut:])


def batches(ids: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(ids) - length - 1, (batch,), generator=generator)
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


@torch.no_grad()
def held_out_loss(model: nn.Module, corpus: Corpus, length: int, n_batches: int = 8, batch: int = 8) -> float:
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    device = next(model.parameters()).device
    losses = [
        model(
            input_ids=(ids := batches(corpus.held_out, batch, length, generator).to(device)), labels=ids
        ).loss
        for _ in range(n_batches)
    ]
    return float(torch.stack(losses).mean())


def train(
    model: nn.Module,
    corpus: Corpus,
    *,
    steps: int,
    lr: float,
    length: int,
    batch: int,
    description: str,
    seed: int,
) -> float:
    """A plain PyTorch loop (JORA's selection runs inside backward; no callback needed). Returns seconds."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    model.train()
    start = time.perf_counter()
    with tqdm(range(steps), desc=description, unit="step", leave=False) as progress:
        for _ in progress:
            ids = batches(corpus.train, batch, length, generator).to(device)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    return time.perf_counter() - start


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def print_table(rows: list[dict[str, object]]) -> None:
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))


def tiny_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=320,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def load_pretrained(name: str) -> tuple[nn.Module, Callable[[str], torch.Tensor]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, torch_dtype=torch.float32)
    return model, lambda text: torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="a Hugging Face causal-LM path or id (default: a tiny Llama pretrained here)"
    )
    parser.add_argument(
        "--data", type=Path, help="a text file to adapt to (default: Python's reference topics)"
    )
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--adapt-steps", type=int, default=120)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--output-dir", type=Path, help="where the adapter is saved (default: a temporary folder)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    length, batch = args.seq_len, args.batch_size
    print(f"jora-peft {jora_peft.__version__} demo on {'cuda' if torch.cuda.is_available() else 'cpu'}")
    adapt_text = args.data.read_text(encoding="utf-8") if args.data else language_reference()
    workdir = Path(args.output_dir or tempfile.mkdtemp(prefix="jora_demo_"))
    workdir.mkdir(parents=True, exist_ok=True)

    if args.model:
        base, encode = load_pretrained(args.model)
        targets: list[str] | None = None  # PEFT's per-architecture defaults
        print(f"model {args.model}: pretrained, {sum(p.numel() for p in base.parameters()):,} parameters")
    else:
        tokenizer = ByteTokenizer()
        encode = tokenizer.encode
        base = tiny_llama(tokenizer.vocab_size, args.seed)
        pretrain = make_corpus(encode(stdlib_docstrings()))
        print(f"1) pretraining a {sum(p.numel() for p in base.parameters()):,}-parameter Llama on "
              f"{len(pretrain.train):,} bytes of standard-library docstrings")  # fmt: skip
        seconds = train(base, pretrain, steps=args.pretrain_steps, lr=3e-3, length=length, batch=batch,
                        description="pretrain", seed=args.seed)  # fmt: skip
        print(f"   held-out loss {held_out_loss(base, pretrain, length):.3f} after {seconds:.0f} s")
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    base_dir = workdir / "base"
    base.save_pretrained(base_dir)
    corpus = make_corpus(encode(adapt_text))
    before = held_out_loss(base, corpus, length)
    print(f"2) adapting to {len(corpus.train):,} tokens of a different text (held-out loss now {before:.3f})")

    methods = {
        "JORA diag+OER (S=16, k=4)": (
            JoraConfig(target_modules=targets, S_L=16, S_R=16, k=4, seed=args.seed),
            2e-2,
        ),
        "LoRA r8": (LoraConfig(target_modules=targets, r=8, lora_alpha=16), 3e-3),
    }
    rows, adapted = [], {}
    for label, (config, lr) in methods.items():
        model = get_peft_model(copy.deepcopy(base), config)
        seconds = train(model, corpus, steps=args.adapt_steps, lr=lr, length=length, batch=batch,
                        description=label, seed=args.seed + 1)  # fmt: skip
        after = held_out_loss(model, corpus, length)
        rows.append({
            "method": label, "trainable": f"{count_trainable(model):,}", "held-out before": f"{before:.3f}",
            "held-out after": f"{after:.3f}", "time (s)": f"{seconds:.1f}",
        })  # fmt: skip
        adapted[label] = model
    print()
    print_table(rows)

    jora_model = adapted["JORA diag+OER (S=16, k=4)"]
    adapter_dir = workdir / "jora_adapter"
    jora_model.save_pretrained(adapter_dir)
    print(f"\n3) saved the JORA adapter to {adapter_dir}")
    probe = batches(corpus.held_out, 4, length, torch.Generator().manual_seed(99))
    with torch.no_grad():
        jora_model.eval()
        trained = jora_model(input_ids=probe).logits
        reloaded = PeftModel.from_pretrained(type(base).from_pretrained(base_dir), adapter_dir).eval()
        unmerged = reloaded(input_ids=probe).logits
        merged_model = reloaded.merge_and_unload()
        merged = merged_model(input_ids=probe).logits
    reload_gap = float((unmerged - trained).abs().max())
    merge_gap = float((merged - unmerged).abs().max())
    scale = float(unmerged.abs().max())
    print(f"   reloaded with PeftModel.from_pretrained: max |reloaded − trained| = {reload_gap:.2e}")
    print(f"   merge_and_unload: max |merged − unmerged| = {merge_gap:.2e} (logits up to {scale:.1f})")
    ok = reload_gap == 0.0 and merge_gap <= 1e-4 * max(1.0, scale) and math.isfinite(merge_gap)
    print("   merged and unmerged outputs agree" if ok else "   MISMATCH between merged and unmerged outputs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
