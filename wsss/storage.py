"""Folders on a local disk or in an object store, behind one small interface.

``Location.parse`` takes a plain path, a ``file://`` URI or any URI pyarrow understands
(``s3://``, ``gs://``, ``hdfs://``); other schemes go through fsspec when it knows them. A
``Location`` is picklable, so Ray tasks on any node read and write through it.

Writes are atomic: on a local disk through a temporary file in the same folder and a rename
(:func:`write_atomic`); in an object store a single PUT publishes the object only when it
is complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.fs as pafs

from wsss.errors import WsssError

TEMP_SUFFIX = ".tmp"
MIN_FREE_ENV = "WSSS_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 50.0


SQLITE_PREFIX = "sqlite:///"


def is_uri(text: str) -> bool:
    """Whether ``text`` is a URI (``scheme://...``) rather than a local path."""
    return "://" in text


def absolute(uri_or_path: str | os.PathLike) -> str:
    """A local path made absolute against the working directory (``~`` expanded, symlinks
    resolved), as every process of a run needs it (Ray workers and Ray storage run elsewhere).

    A relative SQLite URI (``sqlite:///mlflow.db``, SQLAlchemy's form of a relative file) gets
    the absolute path of its file (``sqlite:////abs/mlflow.db``); any other URI (``s3://``,
    ``gs://``, ``file://``, ``http(s)://``, ``sqlite:////abs``) is returned as given. Calling it
    again changes nothing.
    """
    text = str(uri_or_path)
    if text.startswith(SQLITE_PREFIX):
        file = text[len(SQLITE_PREFIX):]
        return text if file.startswith("/") or not file else SQLITE_PREFIX + absolute(file)
    if is_uri(text):
        return text
    return str(Path(text).expanduser().resolve())


def absolute_options(options: argparse.Namespace,
                     names: Sequence[str]) -> argparse.Namespace:
    """``options`` (an ``argparse.Namespace``) with each attribute of ``names`` that is set
    made :func:`absolute`; attributes it does not have, or that are None, are left alone."""
    for name in names:
        value = getattr(options, name, None)
        if value is not None:
            setattr(options, name, absolute(value))
    return options


class OutputError(WsssError, ValueError):
    """An output folder cannot be written (missing rights, a file in the way, a full disk)."""


@dataclass(frozen=True)
class Location:
    """A folder: ``filesystem`` (pyarrow) and ``root`` inside it; ``uri`` as the user gave it."""

    filesystem: Any
    root: str
    uri: str

    @classmethod
    def parse(cls, uri_or_path: str | os.PathLike) -> "Location":
        """Resolve a path or URI; local paths become absolute (Ray workers have another cwd)."""
        text = str(uri_or_path)
        if not is_uri(text):
            return cls(pafs.LocalFileSystem(), absolute(text), text)
        try:
            filesystem, root = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, ValueError) as err:
            filesystem, root = _fsspec_filesystem(text, err)
        return cls(filesystem, root.rstrip("/") or "/", text)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """Full path of ``parts`` inside the filesystem."""
        return "/".join([self.root.rstrip("/"), *parts]) if parts else self.root

    def name(self, *parts: str) -> str:
        """``parts`` as the user would write them (for messages)."""
        return "/".join([self.uri.rstrip("/"), *parts])

    def child(self, *parts: str) -> "Location":
        """The folder ``parts`` inside this one."""
        return Location(self.filesystem, self.path(*parts), self.name(*parts))

    def local_path(self, *parts: str) -> Path:
        """The local file of ``parts``; only for local locations."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on a local disk")
        return Path(self.path(*parts))

    def is_dir(self, *parts: str) -> bool:
        return self.filesystem.get_file_info(self.path(*parts)).type == pafs.FileType.Directory

    def is_file(self, *parts: str) -> bool:
        return self.filesystem.get_file_info(self.path(*parts)).type == pafs.FileType.File

    def list_files(self, *parts: str) -> list[str]:
        """Names of the files directly inside folder ``parts`` ([] when it does not exist)."""
        if not self.is_dir(*parts):
            return []
        selector = pafs.FileSelector(self.path(*parts), recursive=False)
        return sorted(info.base_name for info in self.filesystem.get_file_info(selector)
                      if info.type == pafs.FileType.File)

    def read_bytes(self, *parts: str) -> bytes:
        """Content of file ``parts``; FileNotFoundError naming it when it is missing."""
        try:
            with self.filesystem.open_input_stream(self.path(*parts)) as stream:
                return stream.readall()
        except (FileNotFoundError, OSError) as err:
            if not self.is_file(*parts):
                raise FileNotFoundError(f"file not found: {self.name(*parts)}") from err
            raise

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write ``data`` to file ``parts`` atomically; returns its full path."""
        if self.is_local:
            return str(write_atomic(self.local_path(*parts), data))
        path = self.path(*parts)
        self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.filesystem.open_output_stream(path) as stream:
            stream.write(data)
        return path

    def make_dirs(self, *parts: str) -> None:
        self.filesystem.create_dir(self.path(*parts), recursive=True)

    def remove_temp_files(self, *parts: str) -> int:
        """Delete temporary files (``.<name>.*.tmp``) a killed writer left in folder ``parts``."""
        stale = [n for n in self.list_files(*parts)
                 if n.startswith(".") and n.endswith(TEMP_SUFFIX)]
        for name in stale:
            self.filesystem.delete_file(self.path(*parts, name))
        return len(stale)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; the file is meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(uri_or_path: str | os.PathLike, what: str = "output folder",
                   min_free_mb: float | None = None) -> Location:
    """The folder's ``Location`` once a probe file was written and deleted where the run will
    write: in the folder, or, while it does not exist yet, in its nearest existing parent (a
    check leaves nothing behind; the run creates the folder). On a local disk there must also
    be ``min_free_mb`` free (default ``$WSSS_MIN_FREE_MB`` or 50). OutputError names the
    folder and the problem.
    """
    probe, folder = f".wsss-write-probe-{uuid.uuid4().hex}", None
    try:
        loc = Location.parse(uri_or_path)
        if loc.is_local:
            folder = _nearest_existing(Path(loc.root))
            (folder / probe).write_bytes(b"probe")
            (folder / probe).unlink()
        else:
            loc.write_bytes(b"probe", probe)
            loc.filesystem.delete_file(loc.path(probe))
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise OutputError(f"{what} {uri_or_path} is not writable: {reason}") from err
    if folder is not None:
        _check_free_space(folder, loc.uri, what, min_free_mb)
    return loc


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest existing parent; NotADirectoryError if that is not a folder."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is a file, not a folder")
    return existing


def _check_free_space(folder: Path, uri: str, what: str, min_free_mb: float | None) -> None:
    """OutputError unless the disk of ``folder`` (an existing folder) has room."""
    if min_free_mb is None:
        min_free_mb = float(os.environ.get(MIN_FREE_ENV) or DEFAULT_MIN_FREE_MB)
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise OutputError(f"{what} {uri} has only {free_mb:.1f} MB free on its disk (at "
                          f"least {min_free_mb:g} MB needed; ${MIN_FREE_ENV} sets the minimum)")


def _fsspec_filesystem(uri: str, cause: Exception) -> tuple[Any, str]:
    """(pyarrow filesystem wrapping fsspec's, path) for URIs pyarrow does not know."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as err:
        raise ValueError(f"cannot open {uri}: {cause} (and fsspec is not installed)") from err
    try:
        fs, root = url_to_fs(uri)
    except (ValueError, ImportError) as err:
        raise ValueError(f"cannot open {uri}: {err}") from err
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root
