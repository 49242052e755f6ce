"""Embedding file formats: what we write is what diffusers, AUTOMATIC1111 and ComfyUI read; bad input is refused.

The A1111 and ComfyUI checks re-state those projects' loader rules (from reading
stable-diffusion-webui's modules/safe.py and modules/textual_inversion/, and ComfyUI's
comfy/sd1_clip.py load_embed) as small functions, and run our files through them.
"""

from __future__ import annotations

import base64
import collections
import json
import pickle
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from textinv.embeddings import (
    Embedding,
    read_embedding,
    save_a1111_embedding,
    save_diffusers_embedding,
    write_embedding,
)
from textinv.errors import TextinvError
from textinv.families import describe_family, family_of_dims

# ------------------------------------------------------------------------------------------------
# AUTOMATIC1111's safe-unpickle gate, restated: archive members and pickle globals it allows.

A1111_MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
A1111_DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
A1111_GLOBALS = {
    ("collections", "OrderedDict"),
    *(("torch._utils", n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy")),
    *(
        ("torch", n)
        for n in (
            "FloatStorage",
            "HalfStorage",
            "IntStorage",
            "LongStorage",
            "DoubleStorage",
            "ByteStorage",
            "float32",
            "BFloat16Storage",
        )
    ),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),
    ("__builtin__", "set"),
}


def _inert(*_args, **_kwargs) -> None:
    return None


class _GateUnpickler(pickle.Unpickler):
    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return None

    def find_class(self, module, name):
        if (module, name) in A1111_GLOBALS:
            return _inert  # the gate only checks names; it never builds anything
        raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")


def a1111_safe_gate(path: Path) -> None:
    """Raise if AUTOMATIC1111 (without --disable-safe-unpickle) would refuse to load `path`."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        bad = [n for n in names if not A1111_MEMBER.match(n)]
        if bad:
            raise ValueError(f"bad file inside {path.name}: {bad[0]}")
        pkls = [n for n in names if A1111_DATA_PKL.match(n)]
        if len(pkls) != 1:
            raise ValueError(f"{len(pkls)} data.pkl in {path.name}")
        with z.open(pkls[0]) as f:
            _GateUnpickler(f).load()


def a1111_load(path: Path, data: dict) -> tuple[str, torch.Tensor]:
    """AUTOMATIC1111's embedding loader logic for a .pt/.bin/.safetensors: (prompt word, vectors)."""
    name = path.stem  # A1111 names file-based embeddings after the file
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        assert len(params) == 1, "embedding file has multiple terms in it"
        vec = next(iter(params.items()))[1]
    elif isinstance(data, dict) and "clip_g" in data and "clip_l" in data:
        vec = torch.cat([data["clip_l"], data["clip_g"]], dim=-1)
    elif isinstance(data, dict) and type(next(iter(data.values()))) is torch.Tensor:
        assert len(data) == 1, "embedding file has multiple terms in it"
        vec = next(iter(data.values()))
        if vec.ndim == 1:
            vec = vec.unsqueeze(0)
    else:
        raise AssertionError("neither textual inversion embedding nor diffuser concept")
    for key in ("step", "sd_checkpoint", "sd_checkpoint_name"):
        data.get(key)  # A1111 reads these with .get: present or not, never an error
    return name, vec.detach().to(torch.float32)


def a1111_read_file(path: Path) -> tuple[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return a1111_load(path, load_file(str(path)))
    a1111_safe_gate(path)
    return a1111_load(path, torch.load(path, map_location="cpu", weights_only=False))


def comfyui_load(path: Path, embed_key: str = "clip_l") -> torch.Tensor:
    """ComfyUI's load_embed: safetensors or weights-only torch.load, then the first matching tensor."""
    if path.suffix == ".safetensors":
        embed = load_file(str(path))
    else:
        embed = torch.load(path, weights_only=True, map_location="cpu")
    if "string_to_param" in embed:
        return next(iter(embed["string_to_param"].values()))
    if embed_key in embed:
        return embed[embed_key]
    return next(iter(embed.values()))


# ------------------------------------------------------------------------------------------------


def _vectors(n=2, dim=768, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g) * 0.4).to(dtype)


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pt_we_write_passes_a1111_safe_unpickle_gate(tmp_path, dtype):
    vec = _vectors(3, dtype=dtype)
    a1111 = save_a1111_embedding(tmp_path / "cat-toy.pt", "<cat-toy>", vec, step=500, metadata={"lr": "5e-4"})
    diffusers_bin = save_diffusers_embedding(tmp_path / "learned_embeds.bin", "<cat-toy>", vec)
    for path in (a1111, diffusers_bin):
        a1111_safe_gate(path)
        name, loaded = a1111_read_file(path)
        assert name == path.stem
        assert torch.equal(loaded, vec.to(torch.float32))


def test_gate_restatement_rejects_what_a1111_rejects(tmp_path):
    """The restated gate must bite: plain torch.save adds members it refuses, and foreign globals fail."""
    plain = tmp_path / "plain.pt"
    torch.save({"x": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="bad file inside"):
        a1111_safe_gate(plain)
    sneaky = tmp_path / "sneaky.pt"
    with zipfile.ZipFile(sneaky, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(collections.Counter(), protocol=2))
        z.writestr("archive/version", "3\n")
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        a1111_safe_gate(sneaky)


def test_a1111_pt_has_the_webui_layout(tmp_path):
    vec = _vectors(2)
    path = save_a1111_embedding(
        tmp_path / "x.pt", "<x>", vec, step=120, sd_checkpoint="abcd1234", sd_checkpoint_name="v1-5"
    )
    data = torch.load(path, weights_only=True)
    assert data["string_to_token"] == {"*": 265}
    assert list(data["string_to_param"]) == ["*"]
    assert torch.equal(data["string_to_param"]["*"], vec)
    assert (data["name"], data["step"], data["sd_checkpoint"], data["sd_checkpoint_name"]) == (
        "<x>",
        120,
        "abcd1234",
        "v1-5",
    )
    # diffusers' loader takes the token from `name` when none is given
    assert data["name"] == read_embedding(path).token


def test_a1111_safetensors_holds_one_emb_params_tensor(tmp_path):
    vec = _vectors(4)
    path = save_a1111_embedding(tmp_path / "style.safetensors", "<style>", vec, step=7)
    tensors = load_file(str(path))
    assert list(tensors) == ["emb_params"]
    name, loaded = a1111_read_file(path)
    assert name == "style" and torch.equal(loaded, vec)
    emb = read_embedding(path)
    assert (emb.format, emb.token, emb.metadata["step"]) == ("a1111", "<style>", "7")


@pytest.mark.parametrize(
    "suffix,to", [(".pt", "a1111"), (".safetensors", "a1111"), (".bin", "diffusers"), (".safetensors", "diffusers")]
)
def test_comfyui_reads_every_file_we_write(tmp_path, suffix, to):
    emb = Embedding("<c>", (_vectors(2),), "diffusers")
    path = write_embedding(tmp_path / f"c{suffix}", emb, to)
    assert torch.equal(comfyui_load(path), emb.vectors[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_conversions_round_trip_bitwise(tmp_path, dtype):
    vec = _vectors(3, dtype=dtype, seed=1)
    path = save_diffusers_embedding(tmp_path / "a.safetensors", "<tok>", vec, metadata={"step": "300", "x": "y"})
    chain = [
        ("b.pt", "a1111"),
        ("c.bin", "diffusers"),
        ("d.safetensors", "a1111"),
        ("e.pt", "diffusers"),
        ("f.safetensors", "diffusers"),
    ]
    for name, to in chain:
        path = write_embedding(tmp_path / name, read_embedding(path), to)
        emb = read_embedding(path)
        assert emb.token == "<tok>", name
        assert emb.vectors[0].dtype == dtype
        assert _bits(emb.vectors[0]) == _bits(vec), name
        if name == "b.pt":  # training metadata survives into A1111's .pt (a diffusers .bin has no room)
            assert emb.metadata["step"] == "300" and emb.metadata["x"] == "y"
    assert load_file(str(tmp_path / "a.safetensors"))["<tok>"].shape == (3, 768)


def test_family_is_told_by_dimension(tmp_path):
    assert family_of_dims((768,)) == "sd1"
    assert family_of_dims((1024,)) == "sd2"
    assert family_of_dims((768, 1280)) == "sdxl"
    assert family_of_dims((32,)) == "custom-32"
    assert describe_family((768, 1280)) == "sdxl (768+1280)"
    save_file({"clip_l": _vectors(2, 768), "clip_g": _vectors(2, 1280)}, str(tmp_path / "xl.safetensors"))
    emb = read_embedding(tmp_path / "xl.safetensors")
    assert (emb.format, emb.family, emb.dim, emb.num_vectors, emb.token) == ("sdxl", "sdxl", [768, 1280], 2, "xl")
    assert read_embedding(save_diffusers_embedding(tmp_path / "a.bin", "<a>", _vectors(1, 1024))).family == "sd2"


def test_sdxl_pair_is_written_only_as_a1111_safetensors(tmp_path):
    save_file({"clip_l": _vectors(2, 768), "clip_g": _vectors(2, 1280)}, str(tmp_path / "xl.safetensors"))
    emb = read_embedding(tmp_path / "xl.safetensors")
    out = write_embedding(tmp_path / "out.safetensors", emb, "a1111")
    again = load_file(str(out))
    assert set(again) == {"clip_l", "clip_g"} and torch.equal(again["clip_g"], emb.vectors[1])
    with pytest.raises(TextinvError, match="SDXL"):
        write_embedding(tmp_path / "out.pt", emb, "diffusers")


def test_concepts_library_folder_uses_token_identifier(tmp_path):
    folder = tmp_path / "cat-toy"
    folder.mkdir()
    vec = _vectors(1)[0]  # old concepts-library files hold a 1-D vector
    torch.save({"<cat-toy>": vec}, folder / "learned_embeds.bin")
    (folder / "token_identifier.txt").write_text("<cat-toy>\n")
    (folder / "type_of_concept.txt").write_text("object\n")
    emb = read_embedding(folder)
    assert emb.token == "<cat-toy>" and emb.vectors[0].shape == (1, 768)
    assert emb.metadata["type_of_concept"] == "object"


class _Evil:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
@pytest.mark.parametrize("container", ["zip", "raw-pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, suffix, container):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    payload = {"string_to_param": {"*": _Evil(marker)}, "name": "evil"}
    if container == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(TextinvError, match="refusing to load") as err:
        read_embedding(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # the CLI path too: one line, exit 2
    from textinv.cli import main

    assert main(["inspect", str(path)]) == 2
    assert not marker.exists()


def _one_line_exit_2(capsys, argv) -> str:
    from textinv.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("textinv: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_files_give_one_line_and_exit_2(tmp_path, capsys):
    good = save_diffusers_embedding(tmp_path / "good.safetensors", "<t>", _vectors(2))
    good_pt = save_a1111_embedding(tmp_path / "good.pt", "<t>", _vectors(2))
    cases = {
        "truncated.safetensors": good.read_bytes()[:-100],
        "truncated.pt": good_pt.read_bytes()[: len(good_pt.read_bytes()) // 2],
        "garbage.bin": b"\x00not a torch file at all" * 10,
        "empty.pt": b"",
        "header.safetensors": b"\xff" * 8 + b"{",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        err = _one_line_exit_2(capsys, ["inspect", str(tmp_path / name)])
        assert name in err
    save_file({"a": _vectors(1), "b": _vectors(1)}, str(tmp_path / "two.safetensors"))
    assert "holds 2 entries" in _one_line_exit_2(capsys, ["inspect", str(tmp_path / "two.safetensors")])
    (tmp_path / "nothing").mkdir()
    assert "no embedding in" in _one_line_exit_2(capsys, ["inspect", str(tmp_path / "nothing")])
    assert "does not exist" in _one_line_exit_2(capsys, ["inspect", str(tmp_path / "missing.pt")])
    torch.save({"<t>": torch.zeros(2, 4, 4)}, tmp_path / "cube.bin")
    assert "expected [num_vectors, dim]" in _one_line_exit_2(capsys, ["inspect", str(tmp_path / "cube.bin")])


# ------------------------------------------------------------------------------------------------
# Embeddings inside images, written here the way AUTOMATIC1111 writes them.


def _a1111_json(data: dict) -> str:
    def encode(obj):
        if isinstance(obj, torch.Tensor):
            return {"TORCHTENSOR": obj.tolist()}
        raise TypeError(type(obj))

    return json.dumps(data, default=encode)


def _lcg_mask(shape) -> np.ndarray:
    out, state = np.empty(int(np.prod(shape)), dtype=np.uint8), 0
    for i in range(out.size):
        state = (1664525 * state + 1013904223) % 2**32
        out[i] = state % 255
    return out.reshape(shape) & 0x0F


def _hide_in_pixels(cover: Image.Image, data: dict) -> Image.Image:
    """A1111's layout: [low nibbles][black column][picture][black column][high nibbles], each XOR-masked."""
    packed = np.frombuffer(zlib.compress(_a1111_json(data).encode(), 9), np.uint8)
    h, depth = cover.size[1], 3
    size = packed.size + (h - packed.size % h)
    size += h * depth - size % (h * depth)
    blocks = []
    for nibbles in (packed & 0x0F, packed >> 4):
        block = np.resize(nibbles, size).reshape(h, -1, depth).astype(np.uint8)
        # A1111 also draws a pattern into the high nibble of each pixel; readers mask it away.
        blocks.append(Image.fromarray((block ^ _lcg_mask(block.shape)) | 0x30, "RGB"))
    low, high = blocks
    out = Image.new("RGB", (low.size[0] + cover.size[0] + high.size[0] + 2, h), (0, 0, 0))
    out.paste(low, (0, 0))
    out.paste(cover, (low.size[0] + 1, 0))
    out.paste(high, (low.size[0] + 1 + cover.size[0] + 1, 0))
    return out


def _a1111_payload(vec: torch.Tensor) -> dict:
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vec},
        "name": "img-concept",
        "step": 42,
        "sd_checkpoint": "1234",
        "sd_checkpoint_name": "v1-5",
    }


def test_embedding_in_png_text_chunk_is_read(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    vec = _vectors(2)
    info = PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(_a1111_json(_a1111_payload(vec)).encode()).decode())
    Image.new("RGB", (64, 64), (120, 130, 140)).save(tmp_path / "card.png", pnginfo=info)
    emb = read_embedding(tmp_path / "card.png")
    assert (emb.format, emb.token, emb.metadata["step"]) == ("a1111-image", "img-concept", "42")
    assert emb.vectors[0].dtype == torch.float32 and torch.equal(emb.vectors[0], vec)


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_embedding_in_image_pixels_is_read(tmp_path, suffix):
    vec = _vectors(1, dim=64)
    image = _hide_in_pixels(Image.new("RGB", (48, 48), (90, 160, 200)), _a1111_payload(vec))
    path = tmp_path / f"card{suffix}"
    image.save(path, **({"lossless": True} if suffix == ".webp" else {}))
    emb = read_embedding(path)
    assert emb.token == "img-concept" and torch.equal(emb.vectors[0], vec)
    out = write_embedding(tmp_path / "from-image.pt", emb, "a1111")
    assert torch.equal(read_embedding(out).vectors[0], vec)


def test_plain_image_is_refused(tmp_path, capsys):
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "photo.png")
    assert "no embedding in image" in _one_line_exit_2(capsys, ["inspect", str(tmp_path / "photo.png")])


def test_old_a1111_files_with_parameter_dict_are_read(tmp_path):
    """A1111 embeddings saved with torch 1.11/1.12 wrap the vectors in an nn.ParameterDict."""
    vec = _vectors(2)
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": params, "name": "old", "step": 9}, tmp_path / "o.pt")
    emb = read_embedding(tmp_path / "o.pt")
    assert (emb.token, emb.metadata["step"]) == ("old", "9") and torch.equal(emb.vectors[0], vec)
    assert not emb.vectors[0].requires_grad
