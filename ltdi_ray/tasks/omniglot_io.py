"""Reading Omniglot from the standard layout ``<root>/<Alphabet>/<character>/*.png``.

``root`` may be such a directory, one zip archive of it, or a directory of zip archives (the
published ``images_background*.zip`` files), on a local path or an ``s3://`` URI. Characters
that appear in several archives (same alphabet and name) are read once.
"""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ltdi_ray.errors import DataError
from ltdi_ray.storage.fs import Location

DRAWINGS_PER_CHARACTER = 20


def _png_entries_in_zip(data: bytes, name: str) -> Iterator[Tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        for info in archive.infolist():
            if info.filename.lower().endswith(".png"):
                yield info.filename, archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise DataError(f"cannot read Omniglot archive {name}: {err}") from None


def _png_entries(loc: Location) -> Iterator[Tuple[str, bytes]]:
    fs = loc.fs
    try:
        if not fs.exists(loc.path):
            raise DataError(f"Omniglot root {loc} does not exist; set task.root to a directory or zip archive")
        if loc.path.lower().endswith(".zip"):
            yield from _png_entries_in_zip(fs.cat_file(loc.path), str(loc))
            return
        files = sorted(fs.find(loc.path))
    except (OSError, RuntimeError) as err:
        raise DataError(f"cannot read Omniglot root {loc}: {type(err).__name__}: {err}") from None
    zips = [f for f in files if f.lower().endswith(".zip")]
    for zpath in zips:
        yield from _png_entries_in_zip(fs.cat_file(zpath), zpath)
    if not zips:
        for path in (f for f in files if f.lower().endswith(".png")):
            yield path, fs.cat_file(path)


def _decode(data: bytes, size: int, name: str) -> np.ndarray:
    """PNG bytes -> ``(size, size)`` uint8 ink map (strokes high, background 0)."""
    try:
        img = Image.open(io.BytesIO(data)).convert("L").resize((size, size), Image.Resampling.LANCZOS)
    except Exception as err:  # PIL raises several types for corrupt images
        raise DataError(f"cannot decode Omniglot image {name}: {err}") from None
    return 255 - np.asarray(img, dtype=np.uint8)


@lru_cache(maxsize=4)
def load_characters(root: str, image_size: int, endpoint_url: Optional[str] = None) -> Tuple[Tuple[str, ...], np.ndarray]:
    """All characters under ``root``, sorted by ``Alphabet/character``.

    Returns ``(keys, images)`` with images ``(n_characters, 20, image_size, image_size)`` uint8.
    Cached per process: a collector actor decodes the archives once.
    """
    loc = Location.parse(root, endpoint_url)
    drawings: Dict[str, Dict[str, bytes]] = {}
    for path, data in _png_entries(loc):
        parts = path.replace("\\", "/").split("/")
        if len(parts) < 3:
            continue
        key = f"{parts[-3]}/{parts[-2]}"
        drawings.setdefault(key, {}).setdefault(parts[-1], data)
    if not drawings:
        raise DataError(f"no Omniglot images under {loc}; expected <Alphabet>/<character>/*.png or zip archives of it")
    short = [k for k, v in drawings.items() if len(v) < DRAWINGS_PER_CHARACTER]
    if short:
        raise DataError(f"Omniglot character {short[0]} under {loc} has {len(drawings[short[0]])} drawings, "
                        f"expected {DRAWINGS_PER_CHARACTER}")
    keys = tuple(sorted(drawings))
    images = np.stack([
        np.stack([_decode(drawings[k][f], image_size, f"{k}/{f}")
                  for f in sorted(drawings[k])[:DRAWINGS_PER_CHARACTER]])
        for k in keys
    ])
    return keys, images


SPLIT_BY = ("character", "alphabet")


def split_characters(keys: Sequence[str], fractions: List[float], seed: int, by: str = "character"
                     ) -> Dict[str, np.ndarray]:
    """Disjoint character-index sets for train/val/test of characters ``keys`` (``Alphabet/character``).

    ``by="character"``: a seeded shuffle of the characters cut by ``fractions``. ``by="alphabet"``: a
    seeded shuffle of the alphabets, each whole alphabet going to the first split whose share of the
    characters ``fractions`` has not yet filled, so that no test alphabet is seen in training.
    """
    n = len(keys)
    if by == "character":
        order = np.random.default_rng(seed).permutation(n)
        n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
        parts = [order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]]
    else:
        alphabets = sorted({k.split("/")[0] for k in keys})
        members = {a: [i for i, k in enumerate(keys) if k.split("/")[0] == a] for a in alphabets}
        parts, bounds, filled = [[], [], []], np.cumsum(fractions) * n, 0
        for a in np.random.default_rng(seed).permutation(alphabets):
            which = min(int(np.searchsorted(bounds, filled, side="right")), 2)
            parts[which] += members[a]
            filled += len(members[a])
    if min(len(p) for p in parts) < 1:
        raise DataError(f"{n} Omniglot characters are too few for a split by {by} with fractions {list(fractions)}")
    return {name: np.sort(np.asarray(p, dtype=np.int64)) for name, p in zip(("train", "val", "test"), parts)}
