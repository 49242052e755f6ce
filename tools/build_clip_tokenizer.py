"""Rebuild the exact SD-1.x CLIP tokenizer offline from the BPE file in the clip-anytorch wheel.

Why: no model can be downloaded here, yet tests and the toy model need the real tokenizer.
Install the wheel without its torchvision dependency: ``pip install --no-deps clip-anytorch``.
Usage: ``python tools/build_clip_tokenizer.py OUT_DIR``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

from transformers import CLIPTokenizer


def bytes_to_unicode() -> list[str]:
    """The 256 stand-in characters CLIP's BPE uses for raw bytes, in vocabulary order.

    Printable bytes map to themselves and come first; the rest map to 256+n, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def bpe_file() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the BPE source first: pip install --no-deps clip-anytorch")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def build(out_dir: Path) -> CLIPTokenizer:
    lines = gzip.open(bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = bytes_to_unicode()
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    # Older transformers releases read the slow-tokenizer files; write them too.
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_txt = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (out_dir / "merges.txt").write_text(merges_txt, encoding="utf-8")
    return tok


if __name__ == "__main__":
    t = build(Path(sys.argv[1]))
    print(len(t), t("a photo of a cat").input_ids)
