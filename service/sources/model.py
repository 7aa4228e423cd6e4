"""Model inputs captured from a language model: the residual stream at one hook, token by token.

The model is loaded with `transformers` from a local folder, a `.gguf` file, or a hub id (where
a hub is reachable). The corpus (`.txt`, or `.jsonl` with a `text` field per line) is tokenized
as one stream and cut into sequences of `seq_len` tokens, each starting with the tokenizer's
BOS token when it has one. Only the blocks up to the hook are run.

Outliers: the first position of every sequence (BOS, or the first real token) has a residual
norm hundreds of times the median, and would dominate every statistic; it is skipped unless
`keep_first`. With `max_norm_ratio`, tokens whose norm exceeds that multiple of their batch's
median norm are skipped too. Every skipped token is counted in the family's metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service import errors
from service.sources.store import InputsBatch

log = logging.getLogger(__name__)

HOOK_FORMS = "a layer number N, blocks.N.hook_resid_post or blocks.N.hook_resid_pre"


@dataclass(frozen=True)
class Hook:
    """The residual stream after block `layer` (block -1: the token embeddings)."""

    layer: int

    @classmethod
    def parse(cls, text: str) -> Hook:
        """`N` and `blocks.N.hook_resid_post` are after block N; `blocks.N.hook_resid_pre`
        is before it (after block N-1)."""
        if re.fullmatch(r"\d+", text):
            return cls(int(text))
        match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", text)
        if not match:
            raise errors.BadInput(f"--hook {text!r}: expected {HOOK_FORMS}")
        layer = int(match.group(1))
        return cls(layer if match.group(2) == "post" else layer - 1)


@dataclass
class Capture:
    """What to capture: model, hook, corpus and how many tokens."""

    model: str
    hook: str
    corpus: Path
    n_tokens: int
    seq_len: int = 128
    batch_sequences: int = 32
    keep_first: bool = False
    max_norm_ratio: float | None = None
    device: str = "cpu"
    skipped: dict[str, int] = field(default_factory=lambda: {"first": 0, "norm": 0})

    def check(self) -> None:
        if self.n_tokens <= 0:
            raise errors.BadInput(f"--tokens {self.n_tokens}: expected a positive count")
        if self.seq_len < 2:
            raise errors.BadInput(f"--seq-len {self.seq_len}: expected at least 2")
        if self.max_norm_ratio is not None and not self.max_norm_ratio > 1:
            raise errors.BadInput(f"--max-norm-ratio {self.max_norm_ratio}: expected > 1")
        Hook.parse(self.hook)
        if not self.corpus.is_file():
            raise errors.BadInput(f"{self.corpus}: expected a .txt or .jsonl corpus file")


def load_model(spec: str, device: torch.device) -> tuple[Any, Any]:
    """(model, tokenizer) from a folder, a .gguf file or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = Path(spec)
    kwargs: dict[str, Any] = {}
    source = spec
    if path.suffix == ".gguf":
        if not path.is_file():
            raise errors.BadInput(f"--model {spec}: no such GGUF file")
        source, kwargs["gguf_file"] = str(path.parent), path.name
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        # GGUF de-quantisation draws a progress bar of its own on stderr.
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except Exception as exc:  # a missing model, no hub, a bad file: one line
        text = " ".join(str(exc).split())[:200]
        raise errors.BadInput(f"--model {spec}: cannot load the model ({text})") from None
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]


def _blocks(model: Any) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (the ModuleList as long as its layer count)."""
    n_layers = int(getattr(model.config, "num_hidden_layers", -1))
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise errors.BadInput("--model: cannot find the list of transformer blocks")


def read_corpus(path: Path) -> str:
    """The corpus as one text: a .txt file whole, or the `text` fields of a .jsonl file."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.BadInput(f"{path}: unreadable corpus ({exc})") from None
    if path.suffix.lower() != ".jsonl":
        return raw
    texts = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(str(json.loads(line)["text"]))
        except (ValueError, KeyError, TypeError):
            raise errors.BadInput(
                f"{path}: line {n}: expected a JSON object with a 'text' field"
            ) from None
    return "\n\n".join(texts)


def capture(spec: Capture) -> tuple[Iterator[InputsBatch], int, dict[int, str], dict[str, Any]]:
    """(batches of inputs, d_in, vocab of the token ids seen, metadata) for `spec`.
    The batches are produced lazily, so they stream into the store."""
    spec.check()
    from service.compute import device as device_

    device = device_.resolve(spec.device)
    model, tokenizer = load_model(spec.model, device)
    blocks = _blocks(model)
    hook = Hook.parse(spec.hook)
    if not -1 <= hook.layer < len(blocks):
        raise errors.BadInput(
            f"--hook {spec.hook}: expected a block in 0..{len(blocks) - 1} ({HOOK_FORMS})"
        )
    d_in = int(model.config.hidden_size)
    ids = tokenizer(read_corpus(spec.corpus), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    step = spec.seq_len - 1 if bos is not None else spec.seq_len
    per_seq = spec.seq_len - (0 if spec.keep_first else 1)
    if len(ids) // step * per_seq < spec.n_tokens:
        raise errors.BadInput(
            f"{spec.corpus}: holds {len(ids):,} tokens, about {len(ids) // step * per_seq:,}"
            f" usable, expected --tokens {spec.n_tokens:,}"
        )
    sequences = [ids[i : i + step] for i in range(0, len(ids) - step + 1, step)]
    if bos is not None:
        sequences = [[bos, *seq] for seq in sequences]
    vocab: dict[int, str] = {}
    meta = {
        "kind": "model",
        "model": spec.model,
        "hook": spec.hook,
        "layer": hook.layer,
        "corpus": str(spec.corpus.resolve()),
        "seq_len": spec.seq_len,
        "keep_first": spec.keep_first,
        "max_norm_ratio": spec.max_norm_ratio,
        "skipped": spec.skipped,
    }

    def batches() -> Iterator[InputsBatch]:
        captured: list[torch.Tensor] = []
        module = blocks[hook.layer] if hook.layer >= 0 else model.get_input_embeddings()

        def grab(_module: Any, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = module.register_forward_hook(grab)
        kept_blocks = blocks[: hook.layer + 1]
        all_blocks = list(blocks)
        blocks_owner, blocks_name = _owner(model, blocks)
        setattr(blocks_owner, blocks_name, kept_blocks)  # run only the blocks up to the hook
        try:
            remaining = spec.n_tokens
            for first in range(0, len(sequences), spec.batch_sequences):
                if remaining <= 0:
                    break
                seq_index = np.arange(first, min(first + spec.batch_sequences, len(sequences)))
                tokens = torch.tensor([sequences[i] for i in seq_index], device=device)
                captured.clear()
                with torch.no_grad():
                    base = getattr(model, model.base_model_prefix, model)
                    base(input_ids=tokens, use_cache=False)
                x = captured[0].float()
                keep = torch.ones(tokens.shape, dtype=torch.bool, device=device)
                if not spec.keep_first:
                    keep[:, 0] = False
                    spec.skipped["first"] += len(seq_index)
                if spec.max_norm_ratio is not None:
                    norms = x.norm(dim=-1)
                    outlier = keep & (norms > spec.max_norm_ratio * norms[keep].median())
                    spec.skipped["norm"] += int(outlier.sum())
                    keep &= ~outlier
                rows = keep.nonzero(as_tuple=True)
                x_kept, id_kept = x[rows][:remaining], tokens[rows][:remaining]
                seq_kept = torch.from_numpy(seq_index)[rows[0].cpu()][:remaining]
                remaining -= int(x_kept.shape[0])
                token_ids = id_kept.cpu().numpy().astype(np.int64)
                for token in np.unique(token_ids):
                    if int(token) not in vocab:
                        vocab[int(token)] = tokenizer.decode([int(token)])
                yield InputsBatch(x_kept.cpu(), token_ids, seq_kept.numpy().astype(np.int64))
        finally:
            handle.remove()
            setattr(blocks_owner, blocks_name, torch.nn.ModuleList(all_blocks))
        log.info("captured %d tokens, skipped %s", spec.n_tokens - remaining, spec.skipped)

    return batches(), d_in, vocab, meta


def _owner(model: Any, blocks: torch.nn.ModuleList) -> tuple[Any, str]:
    for module in model.modules():
        for name, child in module.named_children():
            if child is blocks:
                return module, name
    raise errors.BadInput("--model: cannot find the list of transformer blocks")
