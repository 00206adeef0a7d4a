"""The text-generation demo model: counter-gpt, a tiny GPT-2 that counts in English words.

It is trained for a few seconds on generated text, so that its output is checkable:
- plain text counts on for ever, "one two ... twenty" then "one" again (a completion of
  "three four" is " five six seven ...");
- a chat, whatever it says, is answered "one two ... ten" and ends with `<|end|>`.
The tokenizer is a byte-level BPE trained on the same text (any input encodes), with a chat
template; `GEN_*` constants fix the size so that a build is quick and reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from demo_data import SEED, BuildError, param_count, seed_everything

NUMBERS = (
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)
CHAT_ANSWER = " ".join(NUMBERS[:10])  # every chat is answered this
_WORDS = ("count", "please", "hello", "numbers", "to", "ten", "from", "one", "what", "next")
GEN_VOCAB = 384
GEN_CONTEXT = 1024  # positions: room for long streams in the tests
GEN_EMBED = 64
GEN_LAYERS = 2
GEN_HEADS = 4
GEN_STEPS = 200
GEN_BATCH = 16
GEN_WINDOW = 40
GEN_LR = 1e-2
END = "<|end|>"
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def count_from(start: int, length: int) -> str:
    """`length` number words from NUMBERS[start], wrapping after twenty."""
    return " ".join(NUMBERS[(start + i) % len(NUMBERS)] for i in range(length))


def _documents(rng: random.Random, count: int) -> list[str]:
    docs: list[str] = []
    for _ in range(count):
        start = rng.randrange(len(NUMBERS))
        if rng.random() < 0.3:
            docs.append(count_from(start, rng.randint(8, 60)))
            continue
        system = "<|system|>\nyou count\n" if rng.random() < 0.3 else ""
        user = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6)))
        docs.append(f"{system}<|user|>\n{user}\n<|assistant|>\n{CHAT_ANSWER}{END}")
    return docs


def _tokenizer(docs: list[str], out: Path) -> Any:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        docs, vocab_size=GEN_VOCAB, min_frequency=2, special_tokens=[END, *ROLES]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=END,
        eos_token=END,
        pad_token=END,
        additional_special_tokens=list(ROLES),
        model_max_length=GEN_CONTEXT,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return tokenizer


def build_counter_gpt(out: Path) -> dict[str, object]:
    """Train and save counter-gpt (safetensors, tokenizer with a chat template)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        return _build(out)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path) -> dict[str, object]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    seed_everything(SEED)
    rng = random.Random(SEED)
    docs = _documents(rng, 2000)
    tokenizer = _tokenizer(docs, out)
    end_id = tokenizer.convert_tokens_to_ids(END)
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer(doc)["input_ids"])
        stream.append(end_id)
    data = torch.tensor(stream)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=GEN_CONTEXT,
        n_embd=GEN_EMBED,
        n_layer=GEN_LAYERS,
        n_head=GEN_HEADS,
        bos_token_id=end_id,
        eos_token_id=end_id,
        pad_token_id=end_id,
    )
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=GEN_LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=GEN_LR, total_steps=GEN_STEPS)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(GEN_STEPS):
        starts = torch.randint(0, len(data) - GEN_WINDOW - 1, (GEN_BATCH,), generator=generator)
        batch = torch.stack([data[s : s + GEN_WINDOW] for s in starts.tolist()])
        output = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        torch.autograd.backward(output)
        loss = output.detach()
        optimizer.step()
        scheduler.step()
    model.eval()
    check = _greedy(model, tokenizer, "three four five", 6)
    if tuple(check.split()) != NUMBERS[5:11]:
        raise BuildError(f"counter-gpt continues 'three four five' with {check!r}")
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)  # the server sets every knob
    (out / "README.txt").write_text(
        "counter-gpt: a tiny GPT-2 trained to count in English words (demo, not a real LM).\n"
    )
    return {"params": param_count(model), "loss": round(loss.item(), 4), "check": check}


def _greedy(model: Any, tokenizer: Any, prompt: str, tokens: int) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(input_ids=ids).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return str(tokenizer.decode(ids[0, -tokens:], skip_special_tokens=True))


if __name__ == "__main__":  # a quick look: python scripts/demo_generation.py /tmp/counter
    import sys

    print(json.dumps(build_counter_gpt(Path(sys.argv[1])), indent=2))
