"""What each model looks like in the Open Inference Protocol: its tensors, by task.

- text models take `text`, a BYTES tensor of UTF-8 strings;
- image models take `image`, a BYTES tensor of encoded image files (in JSON: base64);
- JSON models (custom loaders) take `input`, a numeric tensor, one row per input (or a
  BYTES tensor of JSON documents).

Classifiers answer `label` (BYTES) and `score` (FP32): `[n]` for the top class, `[n, k]`
when the model answers its top k (image pipelines by default, any with `top_k`);
embedding models answer `embedding` (FP32 `[n, dim]`); feature extractors `features`
(FP32); any other model `output`, a BYTES tensor of each prediction as JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import TYPE_CHECKING, Any

from app.v2.errors import TensorError
from app.v2.json_tensors import json_document
from app.v2.tensors import Tensor
from registry.config.schema import ModelSpec
from registry.payload import to_jsonable

if TYPE_CHECKING:
    import numpy as np

CLASSIFIERS = frozenset({"text-classification", "sentiment-analysis", "image-classification"})
EMBEDDERS = {"sentence-embeddings": "embedding"}
FEATURES = frozenset({"feature-extraction", "image-feature-extraction"})
INPUT_NAME = {"text": "text", "image": "image", "json": "input"}


def platform(spec: ModelSpec) -> str:
    """What serves the model, as GET /v2/models/{name} reports it."""
    return f"model-registry/{spec.task or 'loader:' + (spec.loader or '')}"


def signature(spec: ModelSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The inputs and outputs a model's metadata declares."""
    kind = spec.input_kind
    if kind == "json":
        inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}]
    else:
        inputs = [{"name": INPUT_NAME[kind], "datatype": "BYTES", "shape": [-1]}]
    task = spec.task
    if task in CLASSIFIERS:
        # Image pipelines answer their top 5 by default, text pipelines their top 1.
        shape = [-1, -1] if kind == "image" else [-1]
        outputs = [
            {"name": "label", "datatype": "BYTES", "shape": shape},
            {"name": "score", "datatype": "FP32", "shape": shape},
        ]
    elif task in EMBEDDERS:
        outputs = [{"name": EMBEDDERS[task], "datatype": "FP32", "shape": [-1, -1]}]
    elif task in FEATURES:
        outputs = [{"name": "features", "datatype": "FP32", "shape": [-1, -1, -1, -1]}]
    else:
        outputs = [{"name": "output", "datatype": "BYTES", "shape": [-1]}]
    return inputs, outputs


def model_inputs(name: str, spec: ModelSpec, tensors: list[Tensor]) -> list[Any]:
    """The request's one input tensor as the list of inputs the native API takes."""
    kind = spec.input_kind
    expected = INPUT_NAME[kind]
    if len(tensors) != 1 or tensors[0].name != expected:
        sent = ", ".join(repr(t.name) for t in tensors) or "none"
        raise TensorError(
            f"model {name!r} takes one input tensor named {expected!r} (sent: {sent}); "
            f"see GET /v2/models/{name}"
        )
    tensor = tensors[0]
    if kind == "json":
        return _rows(name, tensor)
    if tensor.datatype != "BYTES":
        what = "UTF-8 strings" if kind == "text" else "encoded image files"
        raise TensorError(f"input {expected!r} of model {name!r} is BYTES ({what})")
    if kind == "text":
        return [_text(name, item) for item in tensor.data]
    return [_image(name, item) for item in tensor.data]


def _text(name: str, item: Any) -> str:
    if isinstance(item, str):
        return item
    try:
        return bytes(item).decode("utf-8")
    except UnicodeDecodeError:
        raise TensorError(f"input 'text' of model {name!r} must be UTF-8 text") from None


def _image(name: str, item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    try:  # JSON cannot carry raw bytes: an image in a JSON tensor is base64
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise TensorError(
            f"input 'image' of model {name!r}: in JSON, send each image file base64-encoded "
            "(or send the tensor in binary)"
        ) from None


def _rows(name: str, tensor: Tensor) -> list[Any]:
    if tensor.datatype == "BYTES":  # each element a JSON document (str in JSON, else bytes)
        return [
            json_document(item, f"element {i} of input 'input' of model {name!r}")
            for i, item in enumerate(tensor.data)
        ]
    if tensor.datatype == "BOOL":
        raise TensorError(f"input 'input' of model {name!r} takes numbers (FP32), not BOOL")
    if len(tensor.shape) <= 1:
        return [tensor.data]  # one row
    width = int(math.prod(tensor.shape[1:]))
    data = tensor.data
    return [data[i : i + width] for i in range(0, len(data), width)] if width else []


def model_outputs(spec: ModelSpec, predictions: list[Any]) -> list[Tensor]:
    """The native API's predictions (one per input) as named output tensors."""
    n = len(predictions)
    task = spec.task
    if task in CLASSIFIERS and predictions and _all_classified(predictions):
        if all(isinstance(p, dict) for p in predictions):
            labels = [str(p["label"]) for p in predictions]
            scores = [float(p["score"]) for p in predictions]
            return [Tensor("label", "BYTES", [n], labels), Tensor("score", "FP32", [n], scores)]
        k = len(predictions[0])
        rows = [p for p in predictions if len(p) == k]
        if len(rows) == n:
            labels = [str(c["label"]) for p in predictions for c in p]
            scores = [float(c["score"]) for p in predictions for c in p]
            return [
                Tensor("label", "BYTES", [n, k], labels),
                Tensor("score", "FP32", [n, k], scores),
            ]
    if task in EMBEDDERS or task in FEATURES:
        array = _numeric(predictions)
        if array is not None:
            name = EMBEDDERS.get(task or "", "features")
            return [Tensor(name, "FP32", list(array.shape), array.ravel())]
    documents = [json.dumps(to_jsonable(p), separators=(",", ":")) for p in predictions]
    return [Tensor("output", "BYTES", [n], documents)]


def _all_classified(predictions: list[Any]) -> bool:
    def one(item: Any) -> bool:
        return isinstance(item, dict) and "label" in item and "score" in item

    return all(one(p) or (isinstance(p, list) and all(one(c) for c in p)) for p in predictions)


def _numeric(predictions: list[Any]) -> np.ndarray[Any, Any] | None:
    import numpy as np  # imported by the first numeric output, not at startup

    try:  # plain lists of floats (the usual case) convert directly
        return np.asarray(predictions, dtype=np.float32)
    except (ValueError, TypeError):
        pass
    try:  # numpy or torch values inside
        return np.asarray(to_jsonable(predictions), dtype=np.float32)
    except (ValueError, TypeError):  # ragged (different token counts) or not numbers
        return None
