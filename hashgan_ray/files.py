"""Atomic writes, the one set used everywhere: a file or directory is written
under a hidden temporary name beside its destination and renamed into place, so
a reader sees the old version or the new one, never half of one, and a failed
write leaves what was there."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def _hidden_beside(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}"


def temp_dir_for(out_dir: Path) -> Path:
    """A new hidden directory beside `out_dir` to write it under, before
    `move_into_place`."""
    tmp = _hidden_beside(Path(out_dir), "tmp")
    tmp.mkdir(parents=True)
    return tmp


def move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    """Rename a finished `tmp_dir` to `out_dir`, replacing what is there: the old
    directory is renamed aside first and removed only once the new one is in place."""
    old = None
    if out_dir.exists():
        old = _hidden_beside(out_dir, "old")
        os.rename(out_dir, old)
    os.rename(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old)


def write_file(path, write) -> Path:
    """Atomically (re)place the file at `path`: `write(tmp_path)` writes the whole
    file to a temporary path beside it, which is then renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_beside(path, "tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    """`text` to the file at `path`, atomically."""
    return write_file(path, lambda tmp: tmp.write_text(text))


def save_figure(fig, path, **savefig) -> Path:
    """A matplotlib figure as PNG at `path`, atomically."""
    return write_file(path, lambda tmp: fig.savefig(tmp, format="png", **savefig))
