"""The worker pipe's messages: one pickle, large buffers out of band, rebuilt writable."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image

from registry.process import wire


def round_trip(message: Any) -> Any:
    """`message` written to a real pipe by one thread and read back by this one."""
    ours, theirs = multiprocessing.Pipe()
    writer = threading.Thread(target=wire.send, args=(theirs, message))
    writer.start()  # a large message does not fit the pipe's buffer: write and read at once
    try:
        return wire.recv(ours)
    finally:
        ours.close()  # first: a writer blocked on a half-read message then fails, not hangs
        writer.join(timeout=30)
        theirs.close()


def test_arrays_tensors_and_images_come_back_equal_and_writable() -> None:
    """A numpy array, a tensor and PIL images (RGB with info, P with its palette) cross the
    pipe unchanged; the array and tensor are writable; small values ride along."""
    array = np.arange(300_000, dtype=np.float32)
    tensor = torch.arange(50_000, dtype=torch.float32).reshape(100, 500)
    rgb = Image.new("RGB", (64, 48), (10, 20, 30))
    rgb.info["dpi"] = (72, 72)
    paletted = Image.new("P", (8, 8))
    paletted.putpalette([1, 2, 3] * 256)
    got = round_trip(("predict", [array, tensor, rgb, paletted, "text", b"raw"], {"k": 1}))
    kind, inputs, parameters = got
    assert (kind, inputs[4:], parameters) == ("predict", ["text", b"raw"], {"k": 1})
    assert np.array_equal(inputs[0], array) and inputs[0].flags.writeable
    inputs[0][0] = 1.0
    assert isinstance(inputs[1], torch.Tensor) and torch.equal(inputs[1], tensor)
    inputs[1][0, 0] = 1.0
    assert (inputs[2].mode, inputs[2].size, inputs[2].info) == ("RGB", (64, 48), rgb.info)
    assert inputs[2].tobytes() == rgb.tobytes()
    assert inputs[3].getpalette() == paletted.getpalette()


def test_large_buffers_are_not_copied_into_the_pickle() -> None:
    """A 4 MB array, a tensor and an image are pickled out of band: the pickle itself stays
    small and each buffer is handed over as is (no tensor or image left to copy)."""
    array = np.zeros(1 << 20, dtype=np.float32)
    tensor = torch.zeros(1 << 20)
    image = Image.new("RGB", (512, 512))
    data, buffers = wire.dumps(["predict", [array, tensor, image], {}])
    assert len(data) < 2000
    assert [b.raw().nbytes for b in buffers] == [4 << 20, 4 << 20, 512 * 512 * 3]


def test_tensors_that_cannot_go_out_of_band_still_cross() -> None:
    """A tensor needing grad, a bfloat16 one and a non-contiguous one are pickled as usual."""
    grad = torch.ones(3, requires_grad=True)
    bf16 = torch.ones(4, dtype=torch.bfloat16)
    strided = torch.arange(12.0).reshape(3, 4).t()
    got = round_trip([grad, bf16, strided])
    assert got[0].requires_grad and torch.equal(got[0].detach(), grad.detach())
    assert got[1].dtype == torch.bfloat16 and torch.equal(got[1], bf16)
    assert torch.equal(got[2], strided)
