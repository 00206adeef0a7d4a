"""The suite's inputs: deterministic digits (PNG), langid sentences and English sentences."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from devkit.demo import builders

# Words of the embedding inputs (minilm): plain English, so that the tokenizer sees real words.
_WORDS = (
    "the a one every this that small large old new quiet busy red green early late "
    "man woman child dog cat bird teacher doctor farmer city river garden kitchen train "
    "road market school window table book letter song picture morning evening winter "
    "summer eats reads writes paints carries finds opens watches builds cleans sells "
    "buys follows crosses visits near behind under over inside across beside quickly "
    "slowly happily carefully again today yesterday together"
)


def embedding_sentence(seed: int) -> str:
    """A deterministic English-like sentence of 8-20 words."""
    rng = random.Random(seed)
    vocabulary = _WORDS.split()
    words = [rng.choice(vocabulary) for _ in range(rng.randint(8, 20))]
    return " ".join(words).capitalize() + "."


class Inputs:
    """Deterministic inputs, written as files: PNG digits and JSON bodies of sentences.

    Kinds: "image" (digits), "text" (langid sentences), "sentence" (embedding sentences).
    """

    COUNT = 16

    def __init__(self, directory: Path) -> None:
        build = builders()
        directory.mkdir(parents=True, exist_ok=True)
        langs = list(build.LANGID_LABELS)
        self.texts = [
            build.langid_sentence(langs[i % len(langs)], i // len(langs)) for i in range(self.COUNT)
        ]
        self.text_bodies = self._json_bodies(directory, "text", self.texts)
        self.sentences = [embedding_sentence(i) for i in range(self.COUNT)]
        self.sentence_bodies = self._json_bodies(directory, "sentence", self.sentences)
        self.pngs: list[Path] = []
        start = build.DIGITS_HELDOUT_START
        for i in range(self.COUNT):
            buffer = io.BytesIO()
            build.digit_image(start + i).save(buffer, format="PNG")
            path = directory / f"digit_{i:02d}.png"
            path.write_bytes(buffer.getvalue())
            self.pngs.append(path)
        self.directory = directory

    @staticmethod
    def _json_bodies(directory: Path, kind: str, texts: list[str]) -> list[Path]:
        paths = []
        for i, text in enumerate(texts):
            path = directory / f"{kind}_{i:02d}.json"
            path.write_text(json.dumps({"inputs": text}))
            paths.append(path)
        return paths

    def files(self, kind: str) -> list[Path]:
        """The request body files of a kind ("text", "sentence" or "image")."""
        return {"text": self.text_bodies, "sentence": self.sentence_bodies, "image": self.pngs}[
            kind
        ]


BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"


def multipart(png: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the image in field `file` (the fixed boundary)."""
    body = (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="digit.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={BOUNDARY}"
