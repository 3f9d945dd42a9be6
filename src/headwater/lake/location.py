"""Where a lake table lives: :class:`Location`, the addresses of the tables under one root.

A table is addressed by its catalog name ``"layer.table"`` (checked against
:func:`headwater.lake.catalog.spec`: an undeclared name raises :class:`NotFoundError`, a
malformed one :class:`InvalidInputError`) and lives at ``<root>/<layer>/<table>``: a local
path, or an object-store URI (``s3://bucket/prefix``: its settings become delta-rs
``storage_options`` and a pyarrow filesystem, :mod:`headwater.lake.objectstore`).

This module does not import delta-rs, so a process that only needs to find a table's files
(the supervisor's heartbeat stats a Delta log every 10 s) does not hold it: importing
``deltalake`` costs ~24 MB resident. :class:`headwater.lake.store.Lake` is a ``Location``
that also reads and writes the tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from headwater.lake import catalog, objectstore

if TYPE_CHECKING:
    from typing import Self

    from headwater.config import Home


class Location:
    """The tables under one root URI (``settings.lake_root``).

    ``storage_options``: delta-rs storage options for an object-store root (credentials,
    endpoint, commit mode: :func:`headwater.lake.objectstore.storage_options`); ``None`` for a
    local path. An ``s3://`` root whose options name no commit mode for concurrent writers is
    refused (:class:`InvalidInputError` naming ``lake.s3_commit``)."""

    def __init__(self, root: str | Path, storage_options: dict[str, str] | None = None):
        self.root = str(root)
        self.storage_options = storage_options
        self._local = "://" not in self.root or self.root.startswith("file://")
        if objectstore.is_s3(self.root):
            objectstore.check_commit_mode(self.root, storage_options)
        self._remote_fs: tuple[pafs.FileSystem, str] | None = None

    @classmethod
    def of(cls, home: Home, **kw) -> Self:
        """The lake of a :class:`headwater.config.Home` (``home.settings.lake_root``, with the
        storage options of its ``lake.s3_*`` settings); ``kw`` go to the constructor."""
        return cls(home.settings.lake_root, objectstore.storage_options(home.settings), **kw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"

    def uri(self, table: str) -> str:
        """Location of ``table`` (``<root>/<layer>/<name>``). :class:`NotFoundError` if the
        catalog does not declare it, :class:`InvalidInputError` for a malformed name."""
        catalog.spec(table)  # validates the name, then that it is declared
        layer, _, name = table.partition(".")
        if self._local:
            return str(Path(self.root.removeprefix("file://")) / layer / name)
        return f"{self.root.rstrip('/')}/{layer}/{name}"

    def filesystem(self, table: str) -> pafs.FileSystem:
        """A pyarrow filesystem rooted at ``table``'s directory (paths inside it are the
        relative paths of the Delta log's ``add`` actions), for reading its files and for
        writers outside delta-rs (Spark executors) to put new files there. Picklable, so it
        travels to executors: for an ``s3://`` root an ``S3FileSystem`` configured from the
        lake's storage options (:func:`headwater.lake.objectstore.s3_filesystem`)."""
        if self._local:
            return pafs.SubTreeFileSystem(str(Path(self.uri(table)).resolve()), pafs.LocalFileSystem())
        fs, base = self._remote()
        layer, _, name = table.partition(".")
        return pafs.SubTreeFileSystem(f"{base}/{layer}/{name}", fs)

    def hadoop_uri(self, table: str) -> str:
        """``table``'s location as Hadoop filesystems (Spark) name it: an absolute local path,
        or ``s3a://bucket/prefix/<layer>/<name>`` for an ``s3://`` root (Spark's S3 connector,
        hadoop-aws, docs/object-storage.md)."""
        uri = self.uri(table)
        if self._local:
            return str(Path(uri).resolve())
        return "s3a://" + uri.split("://", 1)[1] if objectstore.is_s3(uri) else uri

    def _remote(self) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem of an object-store root and the root's path in it
        (``bucket/prefix``), built once (an S3 client holds a connection pool)."""
        if self._remote_fs is None:
            if objectstore.is_s3(self.root):
                path = self.root.split("://", 1)[1]
                self._remote_fs = (objectstore.s3_filesystem(self.storage_options), path.rstrip("/"))
            else:  # another store pyarrow knows (gs://, abfs://): configured by its own environment
                fs, path = pafs.FileSystem.from_uri(self.root)
                self._remote_fs = (fs, path.rstrip("/"))
        return self._remote_fs
