"""What a loader implements (`Loader`), what it gets (`LoadContext`) and returns (`Model`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from registry.config.schema import ModelSpec
    from registry.sources import Source


class Model(Protocol):
    """A loaded model: one output per input, in order.

    Optional hook: `abort() -> None`. When a predict call runs past `predict_timeout`, the
    registry answers 504, marks the model failed and, if the model has an `abort()` method,
    calls it once from another thread so that the stuck call can be stopped (a model that runs
    in a worker process kills the worker there). It must be safe to call while predict runs
    and must not block for long; the model is closed once the stuck call returns.

    Optional attribute: `device`, where the model runs (a str or a torch.device: "cpu",
    "cuda:0", ...). It is read once the load has finished (`device_of`; without it, the
    device of the torch modules in the model) and shown in GET /models: that is how an
    entry with `device: auto` tells where it went.

    Optional hooks for the host-RAM tier (docs/gpus.md): `offload() -> None` moves the
    model's weights from its GPU to host memory (torch: `module.to("cpu")`), and
    `restore(device: str) -> None` moves them back to `device` ("cuda:N"). Both are called
    from a thread while no request holds the model. A model with both (and without
    `offloadable = False`) evicted from a GPU is kept in host memory when the host budget
    has room; any other model is unloaded, as always.

    Optional attribute: `worker`, a `WorkerHandle`: the model runs in a process of its own
    (registry/process/proxy.py) that the registry watches, measures and may kill (`worker_of`).
    The core knows a process model by this attribute only.
    """

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """Predict a batch; raise ValueError/TypeError for inputs the model cannot use."""
        ...

    def close(self) -> None:
        """Drop every reference to weights so that memory can be freed."""
        ...


class WorkerHandle(Protocol):
    """The process a model runs in: what the core asks of it (registry/process/supervision.py
    watches it, follows its memory and recycles it; a call inside it can be ended)."""

    @property
    def pid(self) -> int | None:
        """The process id."""
        ...

    @property
    def alive(self) -> bool:
        """False once the process has died or was stopped."""
        ...

    @property
    def how(self) -> str | None:
        """How the process ended, once it was reaped."""
        ...

    @property
    def lost_in_call(self) -> bool:
        """A call saw the process die, or killed it (a timeout)."""
        ...

    @property
    def reserved(self) -> int:
        """The bytes the budget held when the load ended."""
        ...

    @property
    def size_bytes(self) -> int:
        """What the budget tracks for it now (measured after its last call)."""
        ...

    @property
    def param_bytes(self) -> int:
        """The bytes of its model's parameters."""
        ...

    @property
    def private_bytes(self) -> int:
        """Its private dirty memory at the last measurement."""
        ...

    @property
    def memory(self) -> Mapping[str, int]:
        """Its last memory figures ("private", "uss", "pss")."""
        ...

    def sentinel(self) -> int | None:
        """A descriptor readable once the process has exited (the caller closes it); None if
        it is already reaped."""
        ...

    def saw_exit(self) -> None:
        """The death watch saw the process end."""
        ...

    def reap(self) -> str:
        """Reap the ended process (blocking); how it ended."""
        ...


def worker_of(model: object) -> WorkerHandle | None:
    """The process `model` runs in (its `worker`), None for a model in the server's process."""
    worker: WorkerHandle | None = getattr(model, "worker", None)
    return worker


def can_offload(model: object) -> bool:
    """Whether the model has the host-RAM tier's hooks (`offload`, `restore`) and uses them."""
    hooks = callable(getattr(model, "offload", None)) and callable(getattr(model, "restore", None))
    return hooks and bool(getattr(model, "offloadable", True))


def device_of(model: object) -> str | None:
    """Where a loaded model runs: its `device`, else that of the torch modules in it (None:
    neither tells)."""
    device = getattr(model, "device", None)
    if device is not None:
        return str(device)
    from registry.memory.sizes import tensor_device

    return tensor_device(model)


@dataclass(frozen=True)
class LoadContext:
    """What a loader gets: the model's name, its entry, its resolved source, the config's dir."""

    name: str
    spec: ModelSpec
    source: Source | None
    base_dir: Path  # the directory of models.yaml
    # The device placement chose (cpu, cuda:N); None until placement is wired into loads,
    # when loaders use the entry's first choice (registry/loaders/torch_setup.resolve_device).
    device: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The entry's free-form `options:` mapping."""
        return dict(self.spec.options)


class Loader(Protocol):
    """What every loader module provides: the model, and its size before loading it.

    `estimate_bytes` runs before the load (in a thread, and when a config is checked) so the
    budget can reserve room; it must be cheap, import no torch, and return None where it
    cannot tell. It may raise ValueError for options that cannot make a model.
    """

    def load(self, ctx: LoadContext) -> Model:
        """Load the model (blocking; called from a worker thread or process)."""
        ...

    def estimate_bytes(self, spec: ModelSpec, source: Source | None) -> int | None:
        """Bytes the model will hold once loaded, None where unknown."""
        ...
