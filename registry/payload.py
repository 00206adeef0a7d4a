"""What a prediction request carries in, and how its outputs become JSON."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.errors import BadInput

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_IMAGE_PIXELS = 40_000_000


@dataclass(frozen=True)
class TextRequest:
    """Text (or any JSON) inputs: one item, or a list predicted together."""

    inputs: Any
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_batch(self) -> bool:
        """A list of inputs gets a list of predictions back."""
        return isinstance(self.inputs, list)


@dataclass(frozen=True)
class ImageRequest:
    """One uploaded image file, still encoded."""

    data: bytes
    filename: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    is_batch = False


PredictRequest = TextRequest | ImageRequest


def image_pixels(data: bytes) -> int:
    """Width x height from the image header alone (cheap); 0 when it is not an image."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # decode_image() reports what is wrong
        return 0 if not data else MAX_IMAGE_PIXELS
    return int(width) * int(height)


def decode_image(data: bytes) -> Image:
    """Decode an upload into an RGB PIL image, or raise BadInput saying what was wrong."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    if not data:
        raise BadInput("the uploaded file is empty; send an image (PNG, JPEG, ...) in field 'file'")
    PILImage.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(data))
            image.load()  # decode now: a truncated file fails here, not inside the model
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise BadInput(
            "the uploaded file is not an image PIL can read; send a PNG, JPEG, GIF, BMP or WebP"
        ) from None
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise BadInput(
            f"the image has more than {MAX_IMAGE_PIXELS} pixels; send a smaller image"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadInput(
            f"the uploaded image is broken or truncated ({exc}); send a whole file"
        ) from None


def to_jsonable(value: Any) -> Any:
    """Turn model outputs (numpy, torch, dataclasses of them) into plain JSON values."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            tolist = value.tolist
        return to_jsonable(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return to_jsonable(item())
    if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image: too big for JSON
        return {"image": {"mode": value.mode, "size": list(value.size)}}
    return str(value)
