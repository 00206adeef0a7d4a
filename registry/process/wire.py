"""What crosses a worker's pipe: one pickle (protocol 5), large buffers out of band.

A message is pickled once. The buffers of the objects in it that can be pickled out of band
(numpy arrays; CPU torch tensors and PIL images, through the reducers here) are not copied
into the pickle: each is written to the pipe straight from the object's own memory and read
on the other side straight into the bytearray the object is rebuilt on. (multiprocessing's
`Connection.send`/`recv` copy a message's bytes into the pickle, then through a BytesIO on
the way in, then into the unpickled object: three copies more per buffer.) A message with
no large buffer is a single write, as before.

Framing: every frame is a multiprocessing frame (a 4-byte big-endian length, -1 and 8 bytes
for 2 GiB or more, then the bytes), so `Connection.recv_bytes` can read any of them. Frame
0 is the count of out-of-band buffers and their sizes, then the pickle; one frame follows
per buffer.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_COUNT = struct.Struct("!I")
_SIZE = struct.Struct("!Q")
_FRAME = struct.Struct("!i")
_BIG = struct.Struct("!Q")


class _Pickler(pickle.Pickler):
    """Protocol 5, with CPU tensors and PIL images given out-of-band buffers."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            return _reduce_tensor(obj)
        image = sys.modules.get("PIL.Image")
        if image is not None and isinstance(obj, image.Image):
            return _reduce_image(obj)
        return NotImplemented


def _reduce_tensor(tensor: Any) -> Any:
    """A plain CPU tensor as numpy's array (pickled out of band), rebuilt by from_numpy."""
    torch = sys.modules["torch"]
    plain = type(tensor) is torch.Tensor and tensor.device.type == "cpu"
    if not plain or tensor.requires_grad or tensor.is_sparse or not tensor.is_contiguous():
        return NotImplemented
    try:
        array = tensor.numpy()
    except (TypeError, RuntimeError):  # a dtype numpy has not (bfloat16...)
        return NotImplemented
    return (torch.from_numpy, (array,))


def _reduce_image(image: Any) -> Any:
    """A PIL image's state, its pixel bytes out of band (Image.__setstate__ rebuilds it)."""
    state = image.__getstate__()
    state[4] = pickle.PickleBuffer(state[4])
    return (_new_instance, (type(image),), state)


def _new_instance(cls: Any) -> Any:
    return cls.__new__(cls)


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """The pickle of `obj` and its out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffers.append).dump(obj)
    return out.getvalue(), buffers


def send(conn: Connection, obj: Any) -> None:
    """Write one message (blocking)."""
    data, buffers = dumps(obj)
    raws = [buffer.raw() for buffer in buffers]
    head = _COUNT.pack(len(raws)) + b"".join(_SIZE.pack(raw.nbytes) for raw in raws)
    conn.send_bytes(head + data)
    for raw in raws:
        conn.send_bytes(raw)  # a large one is written from its own memory (no join)


def recv(conn: Connection) -> Any:
    """Read one message (blocking); EOFError once the other end has closed."""
    frame = conn.recv_bytes()
    (count,) = _COUNT.unpack_from(frame)
    sizes = [_SIZE.unpack_from(frame, _COUNT.size + i * _SIZE.size)[0] for i in range(count)]
    start = _COUNT.size + count * _SIZE.size
    buffers = [_read_frame(conn.fileno(), size) for size in sizes]
    return pickle.loads(memoryview(frame)[start:], buffers=buffers)


def _read_frame(fd: int, size: int) -> bytearray:
    """One frame of `size` bytes, read straight into a (writable) bytearray."""
    header = _read_exactly(fd, _FRAME.size)
    (length,) = _FRAME.unpack(header)
    if length == -1:
        (length,) = _BIG.unpack(_read_exactly(fd, _BIG.size))
    if length != size:
        raise OSError(f"worker pipe out of step: a frame of {length} bytes, {size} expected")
    buffer = bytearray(size)
    _read_into(fd, memoryview(buffer))
    return buffer


def _read_exactly(fd: int, size: int) -> bytes:
    buffer = bytearray(size)
    _read_into(fd, memoryview(buffer))
    return bytes(buffer)


def _read_into(fd: int, view: memoryview, read: Callable[..., int] = os.readv) -> None:
    got = 0
    while got < len(view):
        n = read(fd, [view[got:]])
        if n == 0:
            raise EOFError("the worker's pipe closed")
        got += n
