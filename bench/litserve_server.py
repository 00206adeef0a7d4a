"""A LitServe server of one demo model: the baseline of the `litserve` scenario.

    python -m bench.litserve_server '<job as JSON>'

Job: {"name", "entry" (the models.yaml entry: task, source, ...), "port", "threads" (torch
intra-op threads; null: the server's default, one per core but one), "max_batch_size",
"batch_timeout_s", "fast_queue" (LitServe's ZeroMQ transport; default false)}. It serves
`POST /models/<name>/predict` (the registry's path, so the same wrk script drives both) on
127.0.0.1:<port>, and `GET /health` (200 once the model is loaded). SIGTERM shuts LitServe
down as Ctrl+C does (its API server, inference worker and queue manager are child processes).

The model is the registry's: its inference worker loads it with `registry.loaders.load_model`
from the same entry (the transformers pipeline for digits and langid, the registry's
sentence-embeddings model for minilm), decodes an upload with `registry.payload.decode_image`,
and calls `model.predict(batch, {})` on what LitServe's batching collected. The worker sets
torch's threads as the registry's loader does (`registry.loaders.torch_setup`).

Requests, as LitServe parses them by default: JSON `{"inputs": "<text>"}`, or a multipart
upload with the image in field `file`. Answers: `{"model": <name>, "predictions": <output>}`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import litserve as ls


@dataclass(frozen=True)
class Job:
    """What one LitServe server serves, and how it batches."""

    name: str
    entry: dict[str, Any]
    port: int
    threads: int | None
    max_batch_size: int
    batch_timeout_s: float
    fast_queue: bool = False  # LitServe's ZeroMQ transport for the answers

    @classmethod
    def parse(cls, text: str) -> Job:
        """The job from its JSON form."""
        raw = json.loads(text)
        return cls(
            name=raw["name"],
            entry=dict(raw["entry"]),
            port=int(raw["port"]),
            threads=raw.get("threads"),
            max_batch_size=int(raw["max_batch_size"]),
            batch_timeout_s=float(raw["batch_timeout_s"]),
            fast_queue=bool(raw.get("fast_queue", False)),
        )


def request_input(payload: Mapping[str, Any], image: bool) -> Any:
    """What the model gets for one request: the text of a JSON body, or an upload's bytes.

    `payload` is what LitServe's API server parsed: the JSON object, or the multipart form.
    A ValueError for a body the model cannot use (LitServe answers it with a 500).
    """
    if image:
        upload = payload.get("file")
        read = getattr(getattr(upload, "file", None), "read", None)
        if read is None:
            raise ValueError("expected an image upload in multipart field 'file'")
        data = read()
        if not isinstance(data, bytes):
            raise ValueError("the upload in field 'file' did not read as bytes")
        return data
    text = payload.get("inputs")
    if not isinstance(text, str):
        raise ValueError('expected JSON {"inputs": "<text>"}')
    return text


def response_body(name: str, output: Any) -> dict[str, Any]:
    """The answer to one request, shaped as the registry's."""
    return {"model": name, "predictions": output}


class RegistryModelAPI(ls.LitAPI):  # type: ignore[misc]
    """One registry model behind LitServe's batching (built in the parent, run in a worker)."""

    def __init__(self, job: Job) -> None:
        super().__init__(
            max_batch_size=job.max_batch_size,
            batch_timeout=job.batch_timeout_s,
            api_path=f"/models/{job.name}/predict",
        )
        self.job = job
        self.image = job.entry.get("task") == "image-classification"
        self.model: Any = None

    def setup(self, device: str) -> None:
        """Load the model with the registry's loader, with the registry's torch threads."""
        import torch

        from registry.config.schema import ModelSpec
        from registry.loaders import LoadContext, load_model
        from registry.loaders.torch_setup import configure, default_threads
        from registry.sources import resolve_source

        configure(self.job.threads)
        torch.set_num_threads(self.job.threads or default_threads())
        spec = ModelSpec(**self.job.entry)
        source = resolve_source(spec.source, Path.cwd()) if spec.source else None
        self.model = load_model(LoadContext(self.job.name, spec, source, Path.cwd()))

    def decode_request(self, request: Mapping[str, Any]) -> Any:
        """One request's input, an upload decoded as the registry decodes it."""
        value = request_input(request, self.image)
        if self.image:
            from registry.payload import decode_image

            return decode_image(value)
        return value

    def batch(self, inputs: Sequence[Any]) -> list[Any]:
        """The batch as the registry's model takes it: a list, one input per request."""
        return list(inputs)

    def predict(self, x: list[Any]) -> list[Any]:
        """One model call for the batch."""
        outputs: list[Any] = self.model.predict(x, {})
        return outputs

    def unbatch(self, output: list[Any]) -> list[Any]:
        """One output per request, in order (the model's list already is)."""
        return output

    def encode_response(self, output: Any) -> dict[str, Any]:
        """The JSON answer of one request."""
        return response_body(self.job.name, output)


# LitServe picks the endpoint's request and response types from these two annotations; with
# none it parses JSON or a form and encodes the returned dict as JSON, what an unannotated
# LitServe API gets. Under `from __future__ import annotations` they would be strings that it
# takes for types, so they are cleared (mypy has read them).
RegistryModelAPI.decode_request.__annotations__.clear()
RegistryModelAPI.encode_response.__annotations__.clear()


_MAIN_PID = os.getpid()


def _stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: LitServe's graceful shutdown in the main process (it stops its children
    with SIGTERM too; a forked API server inherits this handler and just exits)."""
    if os.getpid() != _MAIN_PID:
        raise SystemExit(0)
    raise KeyboardInterrupt


def main() -> None:
    """Serve the job given as JSON in argv[1] until SIGTERM."""
    job = Job.parse(sys.argv[1])
    signal.signal(signal.SIGTERM, _stop)
    server = ls.LitServer(
        RegistryModelAPI(job),
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        timeout=30,
        fast_queue=job.fast_queue,
    )
    server.run(host="127.0.0.1", port=job.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
