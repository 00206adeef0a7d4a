"""`task: text-generation`: a transformers causal LM, decoded one token per step.

Safetensors only unless the entry sets `allow_pickle`; `trust_remote_code` only where the
entry opts in; offline (a local directory, or `hf:` from the local cache). Decoding is a
manual loop over the model's KV cache (`past_key_values`), one forward pass per `step()`,
so that the core can interleave streams token by token and stop one between two tokens.
Sampling: temperature (0: greedy), top_p, a per-request torch.Generator seeded by `seed`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from registry.config.schema import DEFAULT_MAX_TOKENS
from registry.errors import BadInput
from registry.generation import GenerateRequest, Generation, Token, run_to_end
from registry.loaders.interface import LoadContext
from registry.loaders.torch_setup import one_build_at_a_time, prepare_torch, resolve_device
from registry.memory.sizes import weight_files_bytes

if TYPE_CHECKING:
    from registry.config.schema import ModelSpec
    from registry.sources import Source


class CausalLM:
    """A causal LM and its tokenizer; `start()` begins a generation, `predict()` runs one."""

    def __init__(self, name: str, tokenizer: Any, module: Any, device: str, ceiling: int) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.module = module
        self.device = device
        self.ceiling = ceiling
        config = module.config
        self.context = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None)
            or tokenizer.model_max_length
        )
        eos = getattr(module.generation_config, "eos_token_id", None) or config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos = frozenset(int(e) for e in eos if e is not None)
        self.lock = threading.Lock()  # close() against a running step

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer can turn chat messages into a prompt."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def start(self, request: GenerateRequest) -> Generation:
        """Tokenize the prompt (through the chat template for messages); nothing runs yet."""
        with self.lock:
            if self.module is None:
                raise RuntimeError("the model was unloaded")
            tokenizer = self.tokenizer
            if request.messages is not None:
                if not self.has_chat_template:
                    raise BadInput(
                        f"model {self.name!r} has no chat template (its tokenizer config "
                        "sets none): use /v1/completions with a prompt instead"
                    )
                text = tokenizer.apply_chat_template(
                    [dict(m) for m in request.messages], tokenize=False, add_generation_prompt=True
                )
            else:
                text = request.prompt or ""
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
            ids = [int(bos)]
        room = self.context - len(ids)
        if room < 1:
            raise BadInput(
                f"the prompt is {len(ids)} tokens; model {self.name!r} takes at most "
                f"{self.context - 1} (its context is {self.context})"
            )
        limit = min(request.max_tokens or self.ceiling, self.ceiling, room)
        return Generation(_Session(self, ids, request), limit, request.stop)

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """The generated text of each prompt (native predict; not streamed)."""
        if not all(isinstance(text, str) for text in inputs):
            raise TypeError("text-generation inputs must be strings (prompts)")
        base = GenerateRequest.from_parameters("", parameters)
        return [run_to_end(self.start(replace(base, prompt=text)))[0] for text in inputs]

    def live(self) -> Any:
        """The module (holding the lock), or RuntimeError once the model was closed."""
        if self.module is None or self.tokenizer is None:
            raise RuntimeError("the model was unloaded")
        return self.module

    def step_many(self, sessions: list[_Session]) -> list[Token]:
        """One step of each session: those past their prompt in one batched forward pass
        (their caches left-padded to one length, masked), the others one by one."""
        tokens: dict[int, Token] = {}
        batch = [i for i, s in enumerate(sessions) if s.decoding]
        if len(batch) < 2:
            batch = []
        for i, session in enumerate(sessions):
            if i not in batch:
                tokens[i] = session.step()
        if batch:
            decoded = self._decode_batch([sessions[i] for i in batch])
            tokens.update(zip(batch, decoded, strict=True))
        return [tokens[i] for i in range(len(sessions))]

    def _decode_batch(self, sessions: list[_Session]) -> list[Token]:
        import torch
        from transformers import DynamicCache

        with self.lock, torch.inference_mode():
            module = self.live()
            lengths = [s.cache_length for s in sessions]
            longest = max(lengths)
            cache = DynamicCache()
            for layer in range(len(sessions[0].cache_layers)):
                keys, values = [], []
                for session, length in zip(sessions, lengths, strict=True):
                    k, v = session.cache_layers[layer]
                    pad = (0, 0, longest - length, 0)
                    keys.append(torch.nn.functional.pad(k, pad))
                    values.append(torch.nn.functional.pad(v, pad))
                cache.update(torch.cat(keys), torch.cat(values), layer)
            mask = torch.zeros(len(sessions), longest + 1, dtype=torch.long, device=self.device)
            for row, length in enumerate(lengths):
                mask[row, longest - length :] = 1
            ids = torch.tensor([s.pending for s in sessions], device=self.device)
            positions = torch.tensor([[n] for n in lengths], device=self.device)
            out = module(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            new = out.past_key_values
            tokens = []
            for row, (session, length) in enumerate(zip(sessions, lengths, strict=True)):
                start = longest - length
                session.keep_cache(
                    [
                        (
                            new.layers[layer].keys[row : row + 1, :, start:],
                            new.layers[layer].values[row : row + 1, :, start:],
                        )
                        for layer in range(len(new.layers))
                    ]
                )
                tokens.append(session.take(out.logits[row, -1]))
            return tokens

    def close(self) -> None:
        """Drop the model and tokenizer (a session still open fails its next step)."""
        with self.lock:
            self.module = None
            self.tokenizer = None


class _Session:
    """One generation's KV cache, tokens and sampler."""

    def __init__(self, model: CausalLM, ids: list[int], request: GenerateRequest) -> None:
        import torch

        self._model = model
        self.prompt_tokens = len(ids)
        self._pending = ids  # fed to the next forward pass
        self._cache: Any = None
        self._generated: list[int] = []
        self._text = ""
        self._temperature = request.temperature
        self._top_p = request.top_p
        seed = request.seed if request.seed is not None else random.getrandbits(63)
        self._generator = torch.Generator(device=model.device).manual_seed(seed)

    @property
    def decoding(self) -> bool:
        """Past the prompt: the next forward pass feeds one token on the cache."""
        return self._cache is not None and len(self._pending) == 1

    def step(self) -> Token:
        """One forward pass and one sampled token."""
        import torch

        model = self._model
        with model.lock, torch.inference_mode():
            module = model.live()
            ids = torch.tensor([self._pending], device=model.device)
            out = module(input_ids=ids, past_key_values=self._cache, use_cache=True)
            self._cache = out.past_key_values
            return self.take(out.logits[0, -1])

    def take(self, logits: Any) -> Token:
        """Sample the next token from its logits; its text (holding the model's lock)."""
        model = self._model
        tokenizer = model.tokenizer
        token = self._sample(logits.float())
        if token in model.eos:
            return Token("", "stop")
        self._generated.append(token)
        self._pending = [token]
        text = tokenizer.decode(self._generated, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for its end
            new = ""
        else:
            new, self._text = text[len(self._text) :], text
        if self.prompt_tokens + len(self._generated) >= model.context:
            return Token(new, "length")
        return Token(new)

    def _sample(self, logits: Any) -> int:
        import torch

        if self._temperature < 1e-4:  # 0 is greedy; a tinier one would overflow the softmax
            return int(logits.argmax())
        probs = torch.softmax(logits / self._temperature, dim=-1)
        if self._top_p < 1:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(0) - ordered > self._top_p  # keeps at least the first
            ordered[outside] = 0
            probs = torch.zeros_like(probs).scatter(0, order, ordered)
        return int(torch.multinomial(probs, 1, generator=self._generator))

    @property
    def pending(self) -> list[int]:
        """The tokens the next forward pass feeds."""
        return self._pending

    @property
    def cache_length(self) -> int:
        """Positions in the cache."""
        return int(self._cache.get_seq_length())

    @property
    def cache_layers(self) -> list[tuple[Any, Any]]:
        """The cache's (keys, values) per layer."""
        return [(layer.keys, layer.values) for layer in self._cache.layers]

    def keep_cache(self, layers: list[tuple[Any, Any]]) -> None:
        """Take this session's rows of a batched step's cache."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, (keys, values) in enumerate(layers):
            cache.update(keys.contiguous(), values.contiguous(), index)
        self._cache = cache

    def close(self) -> None:
        """Drop the cache."""
        self._cache = None
        self._pending = []


def load(ctx: LoadContext) -> CausalLM:
    """AutoModelForCausalLM + AutoTokenizer from the entry's source, offline."""
    prepare_torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = ctx.spec
    source = ctx.source
    assert source is not None  # config validation requires a source for a task
    where = source.repo if source.repo is not None else str(source.path)
    if source.path is not None and not source.path.exists():
        raise FileNotFoundError(f"model directory {source.path} does not exist")
    common: dict[str, Any] = {
        "revision": source.revision,
        "trust_remote_code": spec.trust_remote_code,
        "local_files_only": True,
    }
    tokenizer = AutoTokenizer.from_pretrained(where, **common)
    kwargs: dict[str, Any] = dict(common)
    if not spec.allow_pickle:
        kwargs["use_safetensors"] = True
    if spec.dtype is not None:
        kwargs["dtype"] = spec.dtype
    device = resolve_device(spec.device)
    with one_build_at_a_time():
        module = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    module = module.to(device).eval()
    return CausalLM(ctx.name, tokenizer, module, device, spec.max_tokens or DEFAULT_MAX_TOKENS)


def estimate_bytes(spec: ModelSpec, source: Source | None) -> int | None:
    """What the weight files of the source hold, at the entry's dtype."""
    return weight_files_bytes(source, spec.dtype)
