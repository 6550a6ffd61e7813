"""Atomic writes: a file or folder appears complete under its name, or not at all."""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target) -> Iterator[Path]:
    """A fresh temporary path beside ``target`` (same suffix, hidden name) to write a file or a folder
    into; when the block ends without an error it replaces ``target`` (a folder written earlier too),
    otherwise it is removed and ``target`` is left as it was. The folder ``target`` lives in is created."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}"
    try:
        yield tmp
        if tmp.is_dir():
            _replace_folder(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _replace_folder(tmp: Path, target: Path) -> None:
    """Rename the finished folder ``tmp`` to ``target``, replacing a folder written earlier."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
