"""Uploads and argv rewriting: the spec and the local files it references go into a fresh
`<upload_dir>/<timestamp>-<random>/` (staged in a hidden `.…partial` folder and renamed only when every file
arrived, so nothing half-uploaded is ever used), and argv words naming them are rewritten to the remote copies."""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from orchestrator.remote.connect import ssh_errors
from orchestrator.remote.errors import UploadError, reason
from orchestrator.remote.target import Target, remote_abs


def check_uploads(uploads: list[Path]) -> list[Path]:
    """The files to upload, resolved, each once; a missing one fails before anything is uploaded."""
    files: list[Path] = []
    for path in uploads:
        resolved = Path(path).resolve()
        if not resolved.is_file():
            raise UploadError(f"{path}: no such file, so nothing was uploaded or run",
                              "check the path (files are uploaded relative to the spec's folder)")
        if resolved not in files:
            files.append(resolved)
    return files


def upload(conn: Any, target: Target, home: str, files: list[Path]) -> dict[Path, str]:
    """Copy files (spec first) under a fresh folder, keeping their layout relative to their common folder."""
    sftp = conn.sftp()
    base = Path(os.path.commonpath([str(p.parent) for p in files]))
    root = remote_abs(target.upload_dir, home)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    staging = posixpath.join(root, f".{name}.partial")
    final = posixpath.join(root, name)
    rels = {path: path.relative_to(base).as_posix() for path in files}
    try:
        _makedirs(sftp, root)
        sftp.mkdir(staging, 0o700)
        for path, rel in rels.items():
            destination = posixpath.join(staging, rel)
            _makedirs(sftp, posixpath.dirname(destination))
            sftp.put(str(path), destination, confirm=True)
            if sftp.stat(destination).st_size != path.stat().st_size:
                raise OSError(f"size mismatch after uploading {path}")
        sftp.rename(staging, final)
    except ssh_errors() as exc:  # nothing may run after a failed upload
        _remove_tree(sftp, staging)
        raise UploadError(f"upload to {target.host}:{root} failed: {reason(exc)}; nothing was run there",
                          "check remote.upload_dir (exists? writable? free space?) and the local files") from None
    return {path: posixpath.join(final, rel) for path, rel in rels.items()}


def _makedirs(sftp: Any, directory: str) -> None:
    parts = directory.split("/")
    for index in range(1, len(parts) + 1):
        current = "/".join(parts[:index])
        if not current:
            continue
        try:
            info = sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current, 0o700)
            continue
        if not stat.S_ISDIR(info.st_mode or 0):
            raise OSError(f"{current} exists and is not a directory")


def _remove_tree(sftp: Any, directory: str) -> None:
    with contextlib.suppress(*ssh_errors()):  # best effort: a staging folder is hidden and never used
        for entry in sftp.listdir_attr(directory):
            path = posixpath.join(directory, entry.filename)
            if stat.S_ISDIR(entry.st_mode or 0):
                _remove_tree(sftp, path)
            else:
                sftp.remove(path)
        sftp.rmdir(directory)


def rewrite(argv: list[str], remote_paths: dict[Path, str]) -> list[str]:
    """argv with every word (or --opt=VALUE) naming an uploaded local file replaced by its remote path."""

    def swap(word: str) -> str | None:
        if not word:
            return None
        try:
            path = Path(word).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        return remote_paths.get(path)

    out: list[str] = []
    for word in argv:
        replaced = swap(word)
        if replaced is None and word.startswith("--") and "=" in word:
            option, _, value = word.partition("=")
            value_path = swap(value)
            replaced = f"{option}={value_path}" if value_path else None
        out.append(replaced if replaced is not None else word)
    return out
