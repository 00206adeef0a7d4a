"""`task: sentence-embeddings`: mean-pooled, L2-normalised sentence vectors."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from registry.loaders.interface import LoadContext
from registry.loaders.torch_setup import one_build_at_a_time, prepare_torch, resolve_device
from registry.memory.sizes import weight_files_bytes

if TYPE_CHECKING:
    from registry.config.schema import ModelSpec
    from registry.sources import Source

_PARAMETERS = frozenset({"normalize"})


class EmbeddingModel:
    """AutoModel + AutoTokenizer; one vector per input text."""

    def __init__(self, tokenizer: Any, module: Any, device: str, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.module = module
        self.device = device
        self.max_length = max_length
        self._lock = threading.Lock()

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """Embed each text; `parameters.normalize` (default true) L2-normalises."""
        import torch

        unknown = set(parameters) - _PARAMETERS
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}; allowed: normalize")
        if not all(isinstance(text, str) for text in inputs):
            raise TypeError("sentence-embeddings inputs must be strings")
        normalize = bool(parameters.get("normalize", True))
        with self._lock, torch.inference_mode():
            if self.module is None:
                raise RuntimeError("the model was unloaded")
            encoded = self.tokenizer(
                list(inputs),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.module(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return [row for row in vectors.float().cpu().tolist()]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """How many tokens predict() feeds the model for each text (special tokens included)."""
        with self._lock:  # the tokenizer is not safe to share with a running predict()
            if self.tokenizer is None:
                raise RuntimeError("the model was unloaded")
            encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def offload(self) -> None:
        """The host-RAM tier: move the weights to host memory (docs/gpus.md)."""
        with self._lock:
            if self.module is not None:
                self.module = self.module.to("cpu")
            self.device = "cpu"

    def restore(self, device: str) -> None:
        """Move the weights back to `device` after an offload."""
        with self._lock:
            if self.module is None:
                raise RuntimeError("the model was unloaded")
            self.module = self.module.to(device)
            self.device = str(self.module.device)

    def close(self) -> None:
        """Drop the model and tokenizer."""
        with self._lock:
            self.module = None
            self.tokenizer = None


def load(ctx: LoadContext) -> EmbeddingModel:
    """Load the encoder and its tokenizer from the entry's source."""
    prepare_torch()
    from transformers import AutoModel, AutoTokenizer

    spec = ctx.spec
    source = ctx.source
    assert source is not None
    where = source.repo if source.repo is not None else str(source.path)
    if source.path is not None and not source.path.exists():
        raise FileNotFoundError(f"model directory {source.path} does not exist")
    common: dict[str, Any] = {
        "revision": source.revision,
        "trust_remote_code": spec.trust_remote_code,
        "local_files_only": source.repo is not None,
    }
    tokenizer = AutoTokenizer.from_pretrained(where, **common)
    kwargs: dict[str, Any] = dict(common)
    if not spec.allow_pickle:
        kwargs["use_safetensors"] = True
    if spec.dtype is not None:
        kwargs["dtype"] = spec.dtype
    device = ctx.device or resolve_device(spec.device)  # where placement put it
    with one_build_at_a_time():
        module = AutoModel.from_pretrained(where, **kwargs)
    module = module.to(device).eval()
    max_length = int(ctx.options.get("max_length", min(512, tokenizer.model_max_length)))
    # the module's own device: "cuda:0" where `auto` (or `cuda`) resolved to the first GPU
    return EmbeddingModel(tokenizer, module, str(module.device), max_length)


def estimate_bytes(spec: ModelSpec, source: Source | None) -> int | None:
    """What the weight files of the source hold, at the entry's dtype."""
    return weight_files_bytes(source, spec.dtype)
