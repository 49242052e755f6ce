"""`textinv convert IN OUT --to diffusers|a1111`: any embedding format to another (container from OUT)."""

from __future__ import annotations

import argparse
from pathlib import Path

from textinv.errors import TextinvError


def register(subparsers) -> None:
    from textinv.embeddings import WRITE_FORMATS

    p = subparsers.add_parser(
        "convert",
        help="convert an embedding between diffusers and AUTOMATIC1111/ComfyUI formats",
        description="Convert an embedding. IN's format is detected (file, concept folder or A1111 image); "
        "OUT's extension picks the container (.safetensors, .bin, .pt). "
        "Example: textinv convert out/learned_embeds.safetensors cat-toy.pt --to a1111",
    )
    p.add_argument("input", metavar="IN", help="embedding file, concept folder, or PNG/WebP with an embedding")
    p.add_argument(
        "output",
        metavar="OUT",
        help="output file: .safetensors, .bin or .pt; with --to a1111 also .png (an AUTOMATIC1111 embedding image)",
    )
    p.add_argument("--to", required=True, choices=WRITE_FORMATS, help="format to write")
    p.add_argument("--token", default=None, help="rename the concept (default: keep its token)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from textinv.embeddings import read_embedding, write_embedding

    out = Path(args.output)
    if out.exists() and not args.force:
        raise TextinvError(f"{out} already exists; pass --force to overwrite it")
    if Path(args.input).resolve() == out.resolve():
        raise TextinvError("IN and OUT are the same file; choose another OUT")
    emb = read_embedding(args.input)
    if args.token:
        from dataclasses import replace

        emb = replace(emb, token=args.token)
    write_embedding(out, emb, args.to)
    print(f"wrote {out} ({args.to}, token {emb.token}, {emb.num_vectors}x{emb.dim}, {emb.dtype})")
    if args.to == "a1111" and out.suffix.lower() != ".png" and out.stem != emb.token:
        # AUTOMATIC1111 and ComfyUI name a concept file after the file, not after the token inside it
        # (an embedding image after the name inside); textinv generate accepts the file's name too.
        print(f"in AUTOMATIC1111 and textinv generate write {out.stem} in prompts (ComfyUI: embedding:{out.stem})")
    return 0
