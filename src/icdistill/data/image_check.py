"""The start-of-run image check: every image decoded in full, once per file version.

Opening an image's header (``Image.verify()``) passes a JPEG cut short; such a file only fails
when its pixels are decoded, which for a test image is at the final evaluation, after the whole
training. So every image is decoded in full before the first step (in threads, with a progress
bar), and its size compared with the size the annotations give.

What decoded is remembered in a small cache file, keyed by file name, size in bytes and
modification time, so a second run over the same folder does not decode it again (a changed
file is decoded again). The cache lives in the user cache folder: ``$ICDISTILL_CACHE_DIR`` when
set, else ``$XDG_CACHE_HOME/icdistill``, else ``~/.cache/icdistill``; one json file per image
folder under ``decoded_images/`` (named by a hash of the folder's absolute path). Deleting it
only costs the next run the decode. A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from PIL import Image

__all__ = ["cache_file", "decode_problem", "find_undecodable", "image_cache_dir"]

log = logging.getLogger(__name__)

#: Decoding threads: PIL releases the GIL while decoding, so threads use several cores.
_THREADS = min(8, os.cpu_count() or 1)


def image_cache_dir() -> Path:
    """The folder of icdistill's cache files (see the module docstring)."""
    if os.environ.get("ICDISTILL_CACHE_DIR"):
        return Path(os.environ["ICDISTILL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "icdistill"


def cache_file(image_dir: Path) -> Path:
    """The cache file of the images of ``image_dir``."""
    key = hashlib.sha1(str(Path(image_dir).resolve()).encode()).hexdigest()[:20]
    return image_cache_dir() / "decoded_images" / f"{key}.json"


def decode_problem(path: Path, width: int, height: int) -> str | None:
    """Why the image at ``path`` cannot be used (missing, does not decode in full, or is not
    ``width`` x ``height`` pixels), or ``None`` when it decodes to that size."""
    try:
        with Image.open(path) as im:
            im.load()  # the full decode: a truncated file fails here, not at open or verify
            size = im.size
    except FileNotFoundError:
        return "file not found"
    except Exception as e:  # noqa: BLE001 - decoders raise many types; any of them means unusable
        return f"cannot decode: {e}"
    if size != (width, height):
        return (f"is {size[0]}x{size[1]} (w x h) but the annotations say {width}x{height}; "
                f"fix the annotations' width/height")
    return None


def _stamp(path: Path) -> list[int] | None:
    """``[size in bytes, modification time ns]`` of a file, or ``None`` when it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _read_cache(path: Path) -> dict[str, list[int]]:
    try:
        entries = json.loads(path.read_text()).get("files", {})
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _write_cache(path: Path, image_dir: Path, entries: dict[str, list[int]]) -> None:
    """Write atomically (several processes of one run may write the same file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"image_dir": str(image_dir), "files": entries}))
        os.replace(tmp, path)
    except OSError as e:
        log.debug("image check cache %s not written: %s", path, e)


def find_undecodable(
    image_dir: Path,
    images: Sequence[tuple[str, int, int]],
    *,
    desc: str = "decoding images",
    progress: bool = False,
) -> dict[str, str]:
    """Decode every image not decoded before (see the module docstring).

    Args:
        image_dir: the folder the file names are relative to (absolute names are used as is).
        images: ``(file name, width, height)`` of each image, as the annotations give them.
        desc, progress: the tqdm bar's text, and whether it is shown.

    Returns:
        ``{file name: why it cannot be used}`` for every image that is missing, does not
        decode in full or has another size; empty when all are fine.
    """
    from tqdm import tqdm

    image_dir = Path(image_dir)
    cache_path = cache_file(image_dir)
    cached = _read_cache(cache_path)
    stamps = {name: _stamp(image_dir / name) for name, _, _ in images}
    todo = [(n, w, h) for n, w, h in images
            if stamps[n] is None or cached.get(n) != [*stamps[n], w, h]]
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        found = list(tqdm(pool.map(lambda r: decode_problem(image_dir / r[0], r[1], r[2]), todo),
                          total=len(todo), desc=desc, disable=not progress, leave=False))
    problems = {name: why for (name, _, _), why in zip(todo, found) if why is not None}
    fresh = {name: [*stamps[name], w, h] for name, w, h in todo
             if name not in problems and stamps[name] is not None}
    if fresh:
        _write_cache(cache_path, image_dir, {**cached, **fresh})
    return problems
