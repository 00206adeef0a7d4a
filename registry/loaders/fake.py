"""A deterministic fake model of any size and speed, for tests and benchmarks.

`loader: fake` with `options:`
  size: 10MB           bytes it reports (and holds, with `allocate: true`)
  load_seconds: 0.5    time a load takes
  predict_seconds: 0   time each predict call takes (per call, not per input)
  fail: "message"      every load raises RuntimeError(message)
  fail_times: 2        the first N loads of this name raise, later ones succeed
  hang: true           a load blocks until its gate opens (or forever)
  gate: "name"         a load waits for `open_gate(name)` before finishing
  predict_gate: "name"  each predict call waits for `open_gate(name)` first
  reject: "bad"        an input equal to this raises ValueError (one input fails, not its batch)

Memory on a simulated GPU (`server.simulated_devices`; registry/memory/device_usage.py's ledger):
  device_bytes: 100MB  bytes the model claims on its device (`device: cuda:1`; `cuda` or a
                       list: the placed device, else the first GPU named, cuda:0 for `cuda`)
  device_leak: 5MB     each predict call claims this many more there (an allocator cache)
  offload: true        evicted from its GPU, it may be kept in host memory (the host-RAM
                       tier): its claim is given back and its bytes count on the host
  offload_seconds: 0.1 time the copy to the host takes
  restore_seconds: 0.1 time the copy back to a GPU takes (a load takes load_seconds)

Worker-process faults (for `isolation: process`; in a thread model they would hit the server):
  crash: SIGSEGV       die by this signal (or "exit:3": os._exit(3)) ...
  crash_in: predict    ... in `load` or in `predict` (the default)
  crash_on: "boom"     ... only for a predict call with this input (default: every call)
  hang_on: "zzz"       a predict call with this input blocks for ever (`*` : every call)
  leak: 20MB           each predict call keeps this many more bytes, written (so resident)

With `task: text-generation`: a generator of " w0 w1 ..." (registry/loaders/fake_generation.py).

Life-cycle fault modes (model code that misbehaves):
  stop_iteration: where  "load", "predict" or "close" raises StopIteration there
  predict_hang: true     each predict call blocks until abort() is called (or for ever)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from registry.config.schema import GENERATION_TASK
from registry.loaders import fake_generation
from registry.loaders.fake_generation import FakeGenerator
from registry.loaders.interface import LoadContext
from registry.memory.device_usage import Claim, ledger
from registry.memory.devices import is_gpu
from registry.units import parse_size

if TYPE_CHECKING:
    from registry.config.schema import ModelSpec
    from registry.sources import Source

_gates: defaultdict[str, threading.Event] = defaultdict(threading.Event)
_load_attempts: defaultdict[str, int] = defaultdict(int)
_lock = threading.Lock()


def open_gate(name: str) -> None:
    """Let every load waiting on gate `name` finish (now and later)."""
    with _lock:
        _gates[name].set()


def attempts(name: str) -> int:
    """How many loads of model `name` have started."""
    with _lock:
        return _load_attempts[name]


def reset() -> None:
    """Forget gates and load attempts (between tests)."""
    with _lock:
        for gate in _gates.values():
            gate.set()  # release anything still waiting
        _gates.clear()
        _load_attempts.clear()
        _aborts.clear()
        for event in _hanging:
            event.set()
        _hanging.clear()
    fake_generation.reset()


def _gate(name: str) -> threading.Event:
    with _lock:
        return _gates[name]


def fake_size(options: Mapping[str, Any]) -> int:
    """The size a fake model with these options holds."""
    return parse_size(options.get("size", 1000))


def estimate_bytes(spec: ModelSpec, source: Source | None) -> int:
    """Exactly what the model will hold: its `size` option (ValueError if that is no size)."""
    return fake_size(spec.options)


def device_size(options: Mapping[str, Any]) -> int:
    """The bytes a fake model with these options claims on its GPU at load."""
    return parse_size(options.get("device_bytes", 0))


def estimate_device_bytes(spec: ModelSpec, source: Source | None) -> int:
    """What the model will claim on its GPU at load (ValueError if it cannot claim any)."""
    nbytes = device_size(spec.options)
    if nbytes:
        fake_device(spec, None)
    return nbytes


def fake_device(spec: ModelSpec, placed: str | None) -> str:
    """The GPU a fake model claims on: the placed one, else the first GPU its entry names."""
    if placed is not None and is_gpu(placed):
        return placed
    for choice in spec.device_spec.choices:
        if choice in ("cuda", "auto"):
            return "cuda:0"
        if is_gpu(choice):
            return choice
    raise ValueError(
        f"device_bytes claims memory on a GPU, but the model's device is {spec.device!r}; "
        "set device: cuda:N (with server.simulated_devices to simulate it)"
    )


class FakeModel:
    """Predicts a label and a score derived from a hash of each input."""

    def __init__(
        self, name: str, options: Mapping[str, Any], device_claim: Claim | None = None
    ) -> None:
        self.name = name
        self.size_bytes = fake_size(options)
        self.device_claim = device_claim
        self.device_leak = parse_size(options.get("device_leak", 0))
        self.predict_seconds = float(options.get("predict_seconds", 0.0))
        self.reject = options.get("reject")
        gate = options.get("predict_gate")
        self.predict_gate = _gate(str(gate)) if gate is not None else None
        self.calls = 0
        self.batch_sizes: list[int] = []
        self._ballast = bytearray(self.size_bytes) if options.get("allocate") else None
        self.faults = WorkerFaults(options)
        self.offloadable = bool(options.get("offload")) and device_claim is not None
        self.restore_seconds = float(options.get("restore_seconds", 0.0))
        self.offload_seconds = float(options.get("offload_seconds", 0.0))
        self.restores = 0
        self._offloaded_bytes = 0

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """One {label, score} per input; `parameters` are echoed back."""
        if self.reject is not None and any(item == self.reject for item in inputs):
            raise ValueError(f"fake model {self.name!r} rejects the input {self.reject!r}")
        self.faults.on_predict(inputs)
        if self.device_claim is not None and self.device_leak:
            self.device_claim.grow(self.device_leak)
        self.calls += 1
        self.batch_sizes.append(len(inputs))
        if self.predict_gate is not None:
            self.predict_gate.wait()
        if self.predict_seconds:
            time.sleep(self.predict_seconds)
        return [self._one(item, parameters) for item in inputs]

    def _one(self, item: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
        digest = hashlib.sha256(repr(item).encode()).digest()
        result: dict[str, Any] = {
            "label": f"label-{digest[0] % 4}",
            "score": round(digest[1] / 255, 6),
        }
        if parameters:
            result["parameters"] = dict(parameters)
        return result

    @property
    def device_bytes(self) -> int:
        """Bytes this model claims on its simulated GPU now (0 when none)."""
        return self.device_claim.nbytes if self.device_claim is not None else 0

    @property
    def device(self) -> str:
        """Where the model runs: the simulated GPU it claims memory on, else "cpu" (whatever
        the entry's `device`: it holds plain bytes in the server's RAM)."""
        return self.device_claim.path.parent.name if self.device_claim is not None else "cpu"

    def offload(self) -> None:
        """The host-RAM tier's copy to the host: the simulated GPU's bytes are given back
        (the registry counts them on the host from now on)."""
        if self.offload_seconds:
            time.sleep(self.offload_seconds)
        if self.device_claim is not None:
            self._offloaded_bytes = self.device_claim.nbytes
            self.device_claim.release()
            self.device_claim = None

    def restore(self, device: str) -> None:
        """The copy back to simulated GPU `device`: it claims the bytes it gave back."""
        if self.restore_seconds:
            time.sleep(self.restore_seconds)
        self.device_claim = ledger().claim(device, self._offloaded_bytes, owner=self.name)
        self.restores += 1

    def close(self) -> None:
        """Drop the ballast and give the simulated GPU's bytes back."""
        self._ballast = None
        if self.device_claim is not None:
            self.device_claim.release()


def load(ctx: LoadContext) -> FakeModel | FakeGenerator:
    """Build a FakeModel, honouring the timing and failure options."""
    options = ctx.options
    if options.get("stop_iteration") == "load":
        next(iter([]))  # model code's StopIteration, e.g. from next() on an empty iterator
    with _lock:
        _load_attempts[ctx.name] += 1
        attempt = _load_attempts[ctx.name]
        gate = _gates[str(options["gate"])] if "gate" in options else None
    if options.get("hang"):
        (gate or threading.Event()).wait()
    elif gate is not None:
        gate.wait()
    if options.get("crash_in") == "load" and "crash" in options:
        crash(str(options["crash"]))
    delay = float(options.get("load_seconds", 0.0))
    if delay:
        time.sleep(delay)
    if "fail" in options:
        raise RuntimeError(str(options["fail"]))
    if attempt <= int(options.get("fail_times", 0)):
        raise RuntimeError(f"fake load failure {attempt} of {options['fail_times']}")
    claim = _claim_device(ctx)
    if "stop_iteration" in options or options.get("predict_hang"):
        return MisbehavingModel(ctx.name, options, claim)
    if ctx.spec.task == GENERATION_TASK:
        return FakeGenerator(ctx.name, options, ctx.spec.max_tokens, crash)
    return FakeModel(ctx.name, options, claim)


def _claim_device(ctx: LoadContext) -> Claim | None:
    """The model's claim on its simulated GPU (None when it claims nothing)."""
    nbytes = device_size(ctx.options)
    if not nbytes and not ctx.options.get("device_leak"):
        return None
    return ledger().claim(fake_device(ctx.spec, ctx.device), nbytes, owner=ctx.name)


# ---------------------------------------------------------------- worker-process faults


def crash(how: str) -> None:
    """Die now: `exit:N` calls os._exit(N); a signal name (SIGSEGV, SIGKILL) kills us with it."""
    if how.startswith("exit:"):
        os._exit(int(how.removeprefix("exit:")))
    with contextlib.suppress(ValueError, OSError):  # no core file for a deliberate crash
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), signal.Signals[how])
    time.sleep(10)  # a signal that does not kill (SIGUSR1 caught...) must still end us
    os._exit(70)


class WorkerFaults:
    """The crash, hang and leak options of a fake model (meant for worker processes)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        crash_in = options.get("crash_in", "predict")
        self.crash = str(options["crash"]) if "crash" in options and crash_in == "predict" else None
        self.crash_on = options.get("crash_on")
        self.hang_on = options.get("hang_on")
        self.leak = parse_size(options.get("leak", 0))
        self.leaked: list[bytearray] = []

    def on_predict(self, inputs: Sequence[Any]) -> None:
        """Crash, hang or leak as configured."""
        if self.crash is not None and (self.crash_on is None or self.crash_on in inputs):
            crash(self.crash)
        if self.hang_on is not None and (self.hang_on == "*" or self.hang_on in inputs):
            threading.Event().wait()
        if self.leak:
            self.leaked.append(bytearray(b"\x01") * self.leak)  # written: resident, private


# ----------------------------------------------------------------- life-cycle fault modes

_aborts: defaultdict[str, int] = defaultdict(int)
_hanging: list[threading.Event] = []  # released by reset(), so no test leaves a thread stuck


def aborts(name: str) -> int:
    """How many times abort() was called on models named `name`."""
    with _lock:
        return _aborts[name]


class MisbehavingModel(FakeModel):
    """A FakeModel whose predict or close misbehave as its options say."""

    def __init__(
        self, name: str, options: Mapping[str, Any], device_claim: Claim | None = None
    ) -> None:
        super().__init__(name, options, device_claim)
        self.where = options.get("stop_iteration")
        self.hang = bool(options.get("predict_hang"))
        self.aborted = threading.Event()
        with _lock:
            _hanging.append(self.aborted)

    def predict(self, inputs: Sequence[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """Raise StopIteration or hang until aborted, else answer like FakeModel."""
        if self.where == "predict":
            next(iter([]))
        if self.hang:
            self.aborted.wait()
            raise RuntimeError("aborted")
        return super().predict(inputs, parameters)

    def abort(self) -> None:
        """Stop a hanging predict call (the registry calls it after predict_timeout)."""
        with _lock:
            _aborts[self.name] += 1
        self.aborted.set()

    def close(self) -> None:
        """Raise StopIteration if asked to, after dropping the ballast."""
        super().close()
        if self.where == "close":
            next(iter([]))
