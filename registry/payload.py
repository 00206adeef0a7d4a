"""What a prediction request carries in, and how its outputs become JSON."""

from __future__ import annotations

import io
import logging
import math
import re
import struct
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.errors import BadInput

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_IMAGE_PIXELS = 40_000_000
MAX_DECODE_CALLS = 4096  # reads and seeks PIL may make, plus one per kB of the file
# What PIL's decoders raise on malformed files (seen by mutating files of every format).
MALFORMED_IMAGE = (OSError, ValueError, SyntaxError, NotImplementedError, EOFError, struct.error)
log = logging.getLogger("registry")


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


class _DecodeBudget(Exception):
    """The file made PIL do too much parsing work (e.g. a PNG of 800k tiny chunks)."""


class _BoundedReader(io.BytesIO):
    """The upload as PIL's file object, refusing to serve more than `calls` reads or seeks.

    PIL walks PNG chunks, JPEG markers and the like in Python, a few reads each: a file
    padded with hundreds of thousands of empty ones keeps a thread busy for seconds. A
    normal image needs a few reads per 64 kB block it decodes.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.calls = MAX_DECODE_CALLS + len(data) // 1024

    def _spend(self) -> None:
        self.calls -= 1
        if self.calls < 0:
            raise _DecodeBudget

    def read(self, size: int | None = -1, /) -> bytes:
        self._spend()
        return super().read(size)

    def read1(self, size: int | None = -1, /) -> bytes:
        self._spend()
        return super().read1(size)

    def readline(self, size: int | None = -1, /) -> bytes:
        self._spend()
        return super().readline(size)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        self._spend()
        return super().seek(offset, whence)


_configured = False


def _configure_pil() -> None:
    """Process-wide PIL limits, set before the first decode."""
    global _configured
    if _configured:
        return
    from PIL import Image as PILImage
    from PIL import ImageFile, PngImagePlugin

    PILImage.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # 2x this is an error, 1x a warning...
    warnings.filterwarnings("error", category=PILImage.DecompressionBombWarning)  # ...an error
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is the client's error
    PngImagePlugin.MAX_TEXT_CHUNK = 256 * 1024  # text metadata is never used: keep it small
    PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024
    _configured = True


def decode_image(data: bytes) -> Image:
    """Decode an upload into an RGB PIL image, or raise BadInput saying what was wrong.

    Blocking and proportional to the file: call it in a worker thread, never on the loop.
    """
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    if not data:
        raise BadInput("the uploaded file is empty; send an image (PNG, JPEG, ...) in field 'file'")
    _configure_pil()
    try:
        with PILImage.open(_BoundedReader(data)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise PILImage.DecompressionBombError
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
    except _DecodeBudget:
        raise BadInput(
            "the uploaded image has too many chunks or markers for its size to be decoded; "
            "re-save it with a standard encoder"
        ) from None
    except MALFORMED_IMAGE as exc:
        raise BadInput(
            f"the uploaded image is broken or truncated ({type(exc).__name__}: {exc}); "
            "send a whole file"
        ) from None
    except Exception as exc:  # only PIL runs above: a PIL bug that this file triggers
        log.warning("PIL failed on an uploaded image (answered 422)", exc_info=True)
        raise BadInput(
            f"the uploaded image cannot be decoded ({type(exc).__name__}: {exc}); "
            "re-save it as PNG or JPEG"
        ) from None


# What a non-finite or float-overflowing number needs in JSON text: NaN/Infinity, an
# exponent of 100 or more, or a run of 100 digits.
_ODD_NUMBER = re.compile(rb"NaN|Infinity|[eE]\+?0*[1-9][0-9]{2}|[0-9]{100}")


def may_hold_odd_numbers(raw: bytes | str) -> bool:
    """Whether JSON text may hold a number that check_numbers refuses.

    A cheap scan of the text, so that plain JSON is not walked value by value.
    """
    text = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return _ODD_NUMBER.search(text) is not None


def check_numbers(value: Any, where: str) -> None:
    """Raise BadInput naming the first number in `value` that is not a finite float64.

    JSON allows 1e999 (infinity once parsed) and big integers; Python's parser also takes
    NaN and Infinity. A model given one answers nonsense, so they are refused up front.
    """
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, list):
            stack.extend((v, (*path, i)) for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            stack.extend((v, (*path, str(k))) for k, v in reversed(list(item.items())))
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadInput(
                f"{_position(where, path)} is {item!r}: every number must be finite "
                "(no NaN, Infinity or overflowing exponents such as 1e999)"
            )
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > _FLOAT_MAX:
            raise BadInput(
                f"{_position(where, path)} is an integer larger than any 64-bit float "
                "(about 1.8e308); send smaller numbers"
            )


_FLOAT_MAX = sys.float_info.max


def _position(where: str, path: tuple[int | str, ...]) -> str:
    return where + "".join(f"[{p}]" if isinstance(p, int) else f"[{p!r}]" for p in path)


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
