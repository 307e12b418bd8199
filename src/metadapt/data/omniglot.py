"""Load a folder in Omniglot's layout into one tensor of classes x drawings.

The layout is Omniglot's (Lake et al. 2015) as its ``images_background.zip``
and ``images_evaluation.zip`` unpack:
``ROOT/images_<split>/<Alphabet>/characterNN/<id>_<drawer>.png``. It fits the
real Omniglot (105 x 105 black ink on white, 1-bit PNGs) and the set that
``metadapt.data.glyphs.generate_glyphs`` writes (white ink on black). Images are
resized to ``size`` with Lanczos filtering (as the MAML code prepares Omniglot)
and stored as ``uint8`` with ink high: a split whose images have a light
border on average is black on white and is inverted, so ink is high for both.

Every character must have the same number of drawings (Omniglot has exactly
20): a folder with another count is an error naming it, not something padded
or cut silently, since episodes draw ``K + Q`` distinct drawings of a class.
Hidden files and folders (``.DS_Store``, this loader's cache) are skipped.

Decoding some 20,000 PNGs takes seconds; with ``cache=True`` the decoded tensor
is kept in ``ROOT/.metadapt_<split>_<size>.pt`` and reused while the image
files (their paths, sizes and modification times) and the loader are
unchanged. It is read with ``torch.load(weights_only=True)`` and written
atomically; a folder that cannot be written just goes without it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metadapt.errors import MetadaptError

SPLITS = ("background", "evaluation")
_CACHE_VERSION = 1  # bump when the decoding changes: old caches then miss


@dataclass(frozen=True)
class ImageClasses:
    """``C`` classes of ``D`` drawings each.

    ``images`` is ``C x D x S x S`` ``uint8`` (ink high); ``names[c]`` is class
    ``c``'s ``"Alphabet/characterNN"``.
    """

    images: torch.Tensor
    names: list[str]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be a C x D x H x W uint8 tensor, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if len(self.names) != self.images.shape[0]:
            raise ValueError(f"{len(self.names)} names for {self.images.shape[0]} classes")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def drawings(self) -> int:
        """``D``, drawings per class."""
        return int(self.images.shape[1])

    @property
    def alphabets(self) -> list[str]:
        """The alphabets of the classes, each once, in order."""
        return list(dict.fromkeys(n.split("/")[0] for n in self.names))


def _natural(name: str) -> list[object]:
    # character2 before character10, 0709_2.png before 0709_10.png
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: _natural(p.name))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _scan(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    """Class names and their image files, checked: every alphabet has characters, every character images, every
    character the same number of them."""
    alphabets = _subdirs(split_dir)
    if not alphabets:
        raise MetadaptError(f"omniglot: no alphabet folders in {split_dir}")
    names: list[str] = []
    files: list[list[Path]] = []
    for alphabet in alphabets:
        characters = _subdirs(alphabet)
        if not characters:
            raise MetadaptError(f"omniglot: alphabet folder {alphabet} has no character folders")
        for character in characters:
            pngs = sorted((p for p in character.iterdir()
                           if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()),
                          key=lambda p: _natural(p.name))
            if not pngs:
                raise MetadaptError(f"omniglot: character folder {character} has no images (.png)")
            names.append(f"{alphabet.name}/{character.name}")
            files.append(pngs)
    counts = [len(f) for f in files]
    if len(set(counts)) > 1:
        common = max(set(counts), key=counts.count)
        odd = next(i for i, c in enumerate(counts) if c != common)
        raise MetadaptError(f"omniglot: {split_dir / names[odd]} has {counts[odd]} images where the other "
                            f"characters have {common}; every character needs the same number of drawings")
    return names, files


def _fingerprint(files: list[list[Path]], root: Path, size: int) -> str:
    h = hashlib.sha1(f"{_CACHE_VERSION}:{size}".encode())
    for group in files:
        for path in group:
            st = path.stat()
            h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            gray = im.convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(gray, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MetadaptError(f"omniglot: cannot read image {path}: {_one_line(exc)}") from exc


def _read_cache(path: Path, key: str) -> tuple[torch.Tensor, list[str]] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") == key and isinstance(blob.get("images"), torch.Tensor):
            return blob["images"], list(blob["names"])
    except Exception:  # a missing, stale or damaged cache only costs a decode
        return None
    return None


def _write_cache(path: Path, key: str, images: torch.Tensor, names: list[str]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # through a Python file: a full disk is an OSError, not torch's RuntimeError
            torch.save({"key": key, "images": images, "names": names}, f)
        os.replace(tmp, path)
    except OSError:  # a read-only data folder or a full disk: load without a cache
        tmp.unlink(missing_ok=True)


def load_omniglot(root: str | os.PathLike[str], split: str, size: int = 28, cache: bool = True) -> ImageClasses:
    """The classes of one split of an Omniglot-layout folder (see the module docstring).

    Args:
        root: the folder holding ``images_background/`` and ``images_evaluation/``.
        split: ``"background"`` (Omniglot's meta-training alphabets) or ``"evaluation"`` (held out).
        size: side of the returned images (MAML: 28).
        cache: keep and reuse the decoded tensor in ``root`` (a hidden file).

    Raises:
        MetadaptError: a missing folder, an alphabet without characters, a
            character without images or with another number of them than the
            rest, or an image that cannot be read; the message names it.
    """
    if split not in SPLITS:
        raise MetadaptError(f"omniglot: split must be 'background' or 'evaluation', got {split!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise MetadaptError(f"omniglot: size must be a positive integer, got {size!r}")
    root = Path(root)
    if not root.is_dir():
        raise MetadaptError(f"omniglot: folder {root} not found")
    split_dir = root / f"images_{split}"
    if not split_dir.is_dir():
        raise MetadaptError(f"omniglot: {split_dir} not found (an Omniglot folder holds images_background/ "
                            f"and images_evaluation/)")
    names, files = _scan(split_dir)
    cache_path = root / f".metadapt_{split}_{size}.pt"
    key = _fingerprint(files, root, size) if cache else ""
    if cache:
        hit = _read_cache(cache_path, key)
        if hit is not None and hit[1] == names:
            return ImageClasses(hit[0], names)
    images = np.stack([np.stack([_decode(p, size) for p in group]) for group in files])
    # Black ink on white (real Omniglot) or white on black (generated): the border decides, over the whole split,
    # since a single glyph may well touch its own border.
    border = np.concatenate([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], axis=-1)
    if border.mean() > 127.5:
        images = 255 - images
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if cache:
        _write_cache(cache_path, key, tensor, names)
    return ImageClasses(tensor, names)
