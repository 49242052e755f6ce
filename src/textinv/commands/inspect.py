"""`textinv inspect FILE`: what an embedding is (token, shape, family, norms, metadata, nearest words)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from textinv.families import SDXL_ENCODER_KEYS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="show an embedding's token, shape, model family, norms and metadata",
        description="Describe an embedding file or concept folder. With --model, also list the "
        "vocabulary tokens nearest to each vector (cosine similarity).",
    )
    p.add_argument("file", metavar="FILE", help="embedding file, concept folder, or PNG/WebP with an embedding")
    p.add_argument(
        "--model",
        "--pretrained_model_name_or_path",
        dest="model",
        default=None,
        help="model whose vocabulary to compare with (diffusers folder, cached hub id, .safetensors)",
    )
    p.add_argument("--top-k", type=int, default=5, help="nearest tokens per vector (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textinv.embeddings import read_embedding

    emb = read_embedding(args.file)
    report = describe(emb)
    if args.model is not None:
        report.update(compare_with_model(emb, args.model, args.top_k))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def describe(emb) -> dict[str, Any]:
    """The model-free facts about an embedding, JSON-ready."""
    norms = [[round(float(n), 6) for n in v.float().norm(dim=1)] for v in emb.vectors]
    extra = [f"{emb.token}_{i}" for i in range(1, emb.num_vectors)]
    return {
        "path": emb.source,
        "format": emb.format,
        "tokens": [emb.token],
        "prompt_tokens": [emb.token, *extra],  # what diffusers adds to the tokenizer for it
        "num_vectors": emb.num_vectors,
        "dim": emb.dim,
        "dtype": emb.dtype,
        "family": emb.family,
        "norms": norms[0] if len(norms) == 1 else dict(zip(SDXL_ENCODER_KEYS, norms, strict=True)),
        "metadata": dict(emb.metadata),
    }


def compare_with_model(emb, model: str, top_k: int) -> dict[str, Any]:
    """Nearest vocabulary tokens per vector, and the model's typical token norm, for `model`."""
    import torch

    from textinv.concepts import check_concept_fits

    tables = vocabulary_tables(model)
    check_concept_fits(emb, tuple(int(w.shape[1]) for _, w in tables), what=f"model {model}")
    nearest, typical = [], []
    for (tokenizer, weight), vectors in zip(tables, emb.vectors, strict=True):
        w = torch.nn.functional.normalize(weight.float(), dim=1)
        v = torch.nn.functional.normalize(vectors.float(), dim=1)
        sims = v @ w.T
        scores, ids = sims.topk(min(top_k, w.shape[0]), dim=1)
        nearest.append(
            [
                [
                    {"token": _readable(tokenizer, int(i)), "similarity": round(float(s), 4)}
                    for s, i in zip(row_s, row_i, strict=True)
                ]
                for row_s, row_i in zip(scores, ids, strict=True)
            ]
        )
        typical.append(round(float(weight.float().norm(dim=1).mean()), 6))
    if len(tables) == 1:
        return {"model": model, "nearest_tokens": nearest[0], "model_mean_token_norm": typical[0]}
    return {
        "model": model,
        "nearest_tokens": dict(zip(SDXL_ENCODER_KEYS, nearest, strict=True)),
        "model_mean_token_norm": dict(zip(SDXL_ENCODER_KEYS, typical, strict=True)),
    }


def vocabulary_tables(model: str) -> list[tuple[Any, Any]]:
    """(tokenizer, input-embedding matrix) per text encoder, reading only what is needed."""
    from textinv.models import load_pipeline, resolve_model_source, snapshot_dir

    source = resolve_model_source(model)
    folder = snapshot_dir(source)
    if folder is not None:
        tables = _tables_from_folder(folder)
        if tables:
            return tables
    from textinv.families import text_encoder_pairs

    pipe = load_pipeline(source)
    return [(tok, enc.get_input_embeddings().weight.detach()) for tok, enc in text_encoder_pairs(pipe)]


def _tables_from_folder(folder: Path) -> list[tuple[Any, Any]]:
    """Read only the token-embedding matrices from a diffusers folder's safetensors (fast, no model build)."""
    from safetensors import safe_open
    from transformers import CLIPTokenizer

    tables = []
    for suffix in ("", "_2"):
        enc_dir, tok_dir = folder / f"text_encoder{suffix}", folder / f"tokenizer{suffix}"
        if not enc_dir.is_dir():
            break
        files = sorted(enc_dir.glob("*.safetensors"))
        weight = None
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                key = next((k for k in f.keys() if k.endswith("embeddings.token_embedding.weight")), None)
                if key is not None:
                    weight = f.get_tensor(key)
                    break
        if weight is None or not tok_dir.is_dir():
            return []
        tables.append((CLIPTokenizer.from_pretrained(str(tok_dir)), weight))
    return tables


def _readable(tokenizer: Any, token_id: int) -> str:
    """A vocabulary entry as text (CLIP stores byte-level symbols and a `</w>` word-end mark)."""
    text = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token_id)])
    return text.replace("</w>", " ").strip()


def format_report(r: dict[str, Any]) -> str:
    """The human-readable form of `inspect`'s report."""
    dim = r["dim"] if isinstance(r["dim"], int) else " + ".join(map(str, r["dim"]))
    lines = [
        f"file:        {r['path']}",
        f"format:      {r['format']}",
        f"token:       {r['tokens'][0]}"
        + (f"  (expands to {' '.join(r['prompt_tokens'])})" if r["num_vectors"] > 1 else ""),
        f"vectors:     {r['num_vectors']} x {dim}  ({r['dtype']})",
        f"family:      {r['family']}",
    ]
    norms = r["norms"] if isinstance(r["norms"], dict) else {"": r["norms"]}
    for name, values in norms.items():
        label = f"norms {name}".strip() + ":"
        lines.append(f"{label:<13}{', '.join(f'{n:.4f}' for n in values)}")
    if "model_mean_token_norm" in r:
        lines.append(f"model's mean token norm: {r['model_mean_token_norm']}")
    for key, value in r["metadata"].items():
        lines.append(f"meta {key}: {value}")
    if "nearest_tokens" in r:
        nearest = r["nearest_tokens"] if isinstance(r["nearest_tokens"], dict) else {"": r["nearest_tokens"]}
        for name, per_vector in nearest.items():
            for i, row in enumerate(per_vector):
                words = ", ".join(f"{e['token']} ({e['similarity']:.2f})" for e in row)
                lines.append(f"nearest {name}[{i}]: {words}".replace(" [", "["))
    return "\n".join(lines)
