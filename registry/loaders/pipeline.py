"""Any transformers pipeline task: `task: text-classification`, `source: ./model-store/x`."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from registry.errors import BadInput
from registry.hfcache import snapshot_dir
from registry.loaders.interface import LoadContext
from registry.loaders.pipeline_params import (
    check_lengths,
    check_parameters,
    checks_for,
    model_limits,
    truncates,
)
from registry.loaders.torch_setup import one_build_at_a_time, prepare_torch, resolve_device
from registry.memory.sizes import weight_files_bytes

if TYPE_CHECKING:
    from registry.config.schema import ModelSpec
    from registry.sources import Source

# Pipeline call arguments the server owns; a request may not override them.
_RESERVED = frozenset({"batch_size", "num_workers"})
# Tasks whose single input can skip the pipeline's list machinery (a DataLoader per call,
# ~1 ms): run_single() gives exactly what a one-item list call gives.
_SINGLE_FAST = frozenset(
    {"text-classification", "sentiment-analysis", "image-classification", "feature-extraction"}
)
# Text tasks that accept `truncation`: a text longer than the model takes is cut, not an error.
_TRUNCATING = frozenset(
    {"text-classification", "sentiment-analysis", "feature-extraction", "zero-shot-classification"}
)
# Those whose texts go to the model as they are, so that with truncation off their token count
# is checked first (zero-shot adds a hypothesis and always cuts the text to fit).
_LENGTH_CHECKED = _TRUNCATING - {"zero-shot-classification"}


class PipelineModel:
    """A transformers pipeline; calls are serialised (pipelines are not thread-safe)."""

    def __init__(self, pipe: Any, task: str | None) -> None:
        self._pipe = pipe
        self._defaults = {"truncation": True} if task in _TRUNCATING else {}
        self._single_fast = task in _SINGLE_FAST and hasattr(pipe, "run_single")
        self.module = pipe.model  # what memory.measure_bytes counts
        self.device = str(pipe.device)  # "cpu", "cuda:0": where `device: auto` went
        limits = model_limits(pipe)
        self._checks = checks_for(limits)
        # Texts are counted before a call with truncation off (a too long one fails in the model).
        checked = task in _LENGTH_CHECKED and getattr(pipe, "tokenizer", None) is not None
        self._max_tokens = limits.get("max_length") if checked else None
        self._lock = threading.Lock()

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """Run the pipeline over `inputs` as one batch."""
        reserved = _RESERVED & set(parameters)
        if reserved:
            raise BadInput(f"parameters {sorted(reserved)} are set by the server")
        check_parameters(parameters, self._checks)
        with self._lock:
            if self._pipe is None:
                raise RuntimeError("the model was unloaded")
            kwargs = {**self._defaults, **parameters}
            if self._max_tokens is not None and not truncates(kwargs):
                check_lengths(self._pipe.tokenizer, inputs, self._max_tokens)
            if len(inputs) == 1 and self._single_fast:
                return [self._run_single(inputs[0], kwargs)]
            outputs = self._pipe(list(inputs), batch_size=len(inputs), **kwargs)
        if not isinstance(outputs, list) or len(outputs) != len(inputs):
            outputs = [outputs]
        return list(outputs)

    def _run_single(self, item: Any, kwargs: dict[str, Any]) -> Any:
        """What Pipeline.__call__ does for one non-list input, without its task wrappers."""
        pipe = self._pipe
        pre, forward, post = pipe._sanitize_parameters(**kwargs)
        return pipe.run_single(
            item,
            {**pipe._preprocess_params, **pre},
            {**pipe._forward_params, **forward},
            {**pipe._postprocess_params, **post},
        )

    def offload(self) -> None:
        """The host-RAM tier: move the weights to host memory (docs/gpus.md)."""
        self._move("cpu")

    def restore(self, device: str) -> None:
        """Move the weights back to `device` after an offload."""
        self._move(device)

    def _move(self, device: str) -> None:
        import torch

        with self._lock:
            if self._pipe is None:
                raise RuntimeError("the model was unloaded")
            self._pipe.model.to(device)
            self._pipe.device = torch.device(device)  # where the pipeline puts its inputs
            self.device = str(self._pipe.device)

    def close(self) -> None:
        """Drop the pipeline and its model."""
        with self._lock:
            self._pipe = None
            self.module = None


def load(ctx: LoadContext) -> PipelineModel:
    """Build `pipeline(task, model=source)` offline, safetensors only unless allowed."""
    prepare_torch()
    from transformers import pipeline

    spec = ctx.spec
    source = ctx.source
    assert source is not None  # config validation requires a source for a task
    path = source.path
    if source.repo is not None:
        # The cached snapshot, as a plain directory: pipeline() passes its local_files_only
        # on to the pipeline class, which refuses it, and a directory never downloads.
        path = snapshot_dir(source.repo, source.revision)
    assert path is not None
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    model_kwargs: dict[str, Any] = {}
    if not spec.allow_pickle:
        model_kwargs["use_safetensors"] = True
    kwargs: dict[str, Any] = dict(ctx.options)
    kwargs.setdefault("model_kwargs", {}).update(model_kwargs)
    if spec.dtype is not None:
        kwargs["dtype"] = spec.dtype
    device = ctx.device or resolve_device(spec.device)  # where placement put it
    with one_build_at_a_time():
        pipe = pipeline(
            task=spec.task,
            model=str(path),
            device=device,
            trust_remote_code=spec.trust_remote_code,
            **kwargs,
        )
    return PipelineModel(pipe, spec.task)


def estimate_bytes(spec: ModelSpec, source: Source | None) -> int | None:
    """What the weight files of the source hold, at the entry's dtype."""
    return weight_files_bytes(source, spec.dtype)
