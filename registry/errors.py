"""Every error the registry raises, in one tree.

    RegistryError
    ├── ConfigError              models.yaml is invalid (names the file, the model and the field)
    ├── UnknownModel             no model of that name (carries the known names)
    ├── BadInput                 the request's input cannot be used by this model
    │   └── UnsupportedInput     the input is the wrong kind (an image for a text model, ...)
    ├── ModelTooLarge            a model is bigger than the whole memory budget
    ├── InferenceError           the model raised while predicting
    │   ├── InferenceTimeout     predict ran past predict_timeout (the model is marked failed)
    │   ├── GenerationTimeout    a stream ran past predict_timeout (ended; the model is fine)
    │   └── WorkerDied           a process model's worker died (signal or exit code)
    └── Unavailable              try again later; carries `retry_after` seconds
        ├── ModelFailed          its last load failed; retried after a backoff
        ├── LoadPending          still loading after the request's wait
        ├── QueueFull            too many requests already wait for this model
        │   ├── LoadQueueFull    ... for its load ("loading")
        │   └── BusyQueueFull    ... for inference on it ("busy")
        ├── CapacityExceeded     does not fit: everything else is in use or pinned
        └── ShuttingDown         the server is draining

The web adapter maps each class to one HTTP status in one place (app/errors.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from registry.units import format_bytes


class RegistryError(Exception):
    """Base class of every error raised by the registry."""

    kind = "registry_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RegistryError):
    """models.yaml cannot be used; `problems` lists each one as 'where: what'."""

    kind = "config_error"

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid config {path}:\n{lines}")


class UnknownModel(RegistryError):
    """The name is not in the registry."""

    kind = "unknown_model"

    def __init__(self, name: str, known: Iterable[str], *, removed: bool = False) -> None:
        self.name = name
        self.known = sorted(known)
        names = ", ".join(self.known) or "(none)"
        why = "was removed from the registry" if removed else "is not in the registry"
        super().__init__(f"model {name!r} {why}; known models: {names}")


class BadInput(RegistryError):
    """The request's input is malformed; the message says what was expected."""

    kind = "bad_input"


class UnsupportedInput(BadInput):
    """The input is of a kind this model does not take."""

    kind = "unsupported_input"


class ModelTooLarge(RegistryError):
    """A model needs more bytes than the whole budget."""

    kind = "model_too_large"

    def __init__(
        self, name: str, size: int, budget: int, *, measured: bool = False, device: str = "cpu"
    ) -> None:
        self.name = name
        self.size = size
        self.budget = budget
        self.measured = measured
        self.device = device  # the device whose budget it does not fit (cpu: the host)
        how = "measured" if measured else "estimated"
        where = "" if device == "cpu" else f" of {device}"
        key = "memory_budget" if device == "cpu" else f"memory_budget's {device} entry"
        super().__init__(
            f"model {name!r} needs {format_bytes(size)} ({how}) but the whole memory budget"
            f"{where} is {format_bytes(budget)}; raise server.{key} or use a smaller model"
        )


class InferenceError(RegistryError):
    """The model raised while predicting (not the caller's fault)."""

    kind = "inference_error"


class InferenceTimeout(InferenceError):
    """A predict call ran past `predict_timeout`; its model is marked failed."""

    kind = "inference_timeout"

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        super().__init__(
            f"model {name!r} did not answer within {seconds:g}s (predict_timeout); it is marked "
            "failed and reloads after its backoff once the stuck call ends"
        )


class GenerationTimeout(InferenceError):
    """A generation stream ran past `predict_timeout`: it ends; its model stays loaded."""

    kind = "generation_timeout"

    def __init__(self, name: str, seconds: float, tokens: int) -> None:
        self.name = name
        self.seconds = seconds
        super().__init__(
            f"generation on model {name!r} ran past {seconds:g}s (predict_timeout) after "
            f"{tokens} token(s); ask for fewer tokens (max_tokens)"
        )


class WorkerDied(InferenceError):
    """A process model's worker process died; `how` says how (signal name or exit code)."""

    kind = "worker_died"

    def __init__(self, name: str, pid: int | None, how: str, *, during: str = "inference") -> None:
        self.name = name
        self.pid = pid
        self.how = how
        super().__init__(
            f"model {name!r}: its worker process (pid {pid}) died during {during}: {how}; "
            "the model is marked failed and reloads on a later request"
        )


class Unavailable(RegistryError):
    """The model cannot serve now; the caller should retry after `retry_after` seconds."""

    kind = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = max(1.0, retry_after)


class ModelFailed(Unavailable):
    """The model's last load failed; it is retried after a backoff."""

    kind = "model_failed"

    def __init__(
        self, name: str, error: str, *, retry_after: float, what: str = "failed to load"
    ) -> None:
        self.name = name
        self.error = error
        super().__init__(
            f"model {name!r} {what}: {error} (next attempt in {retry_after:.0f}s)",
            retry_after=retry_after,
        )


class LoadPending(Unavailable):
    """The model is still loading after the request waited as long as it may."""

    kind = "loading"


class QueueFull(Unavailable):
    """Too many requests already wait for this model (one of the two kinds below)."""


class LoadQueueFull(QueueFull):
    """Too many requests already wait for this model's load."""

    kind = "loading"


class BusyQueueFull(QueueFull):
    """Too many requests already wait for this loaded model's inference."""

    kind = "busy"


class CapacityExceeded(Unavailable):
    """Not enough of the budget can be freed: the rest is in use or pinned."""

    kind = "capacity"

    def __init__(
        self,
        name: str,
        size: int,
        used: int,
        budget: int,
        *,
        retry_after: float,
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.size = size
        self.used = used
        self.budget = budget
        self.device = device  # where it found no room (cpu: the host)
        where, there = ("", "") if device == "cpu" else (f" {device}", f" on {device}")
        super().__init__(
            f"model {name!r} needs {format_bytes(size)} but only {format_bytes(budget - used)} of "
            f"the{where} {format_bytes(budget)} budget is free and every other model{there} is "
            "in use or pinned",
            retry_after=retry_after,
        )


class ShuttingDown(Unavailable):
    """The server is draining and takes no new requests."""

    kind = "shutting_down"

    def __init__(self) -> None:
        super().__init__("the server is shutting down", retry_after=5.0)
