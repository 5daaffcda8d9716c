"""Storage of the update server: packages and their rules, devices, progress.

SQLAlchemy Core, not the ORM and not raw ``sqlite3``: the same statements run
on the embedded SQLite file and on PostgreSQL (give ``--database
postgresql+psycopg://...``), with SQLAlchemy's statement cache and connection
pool, and nothing here spells SQL of one dialect. Image bytes are not in the
database: :class:`BlobStore` keeps them as files named by their SHA-256 (a
shared volume when several servers use one PostgreSQL).

Every write is one transaction; SQLite runs in WAL mode with ``synchronous=
FULL`` so a server killed at any moment restarts with every package and
progress report it acknowledged.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from otaflash import hashing
from otaflash.errors import InputError

__all__ = ["Artifact", "Blob", "BlobStore", "Package", "PackageSpec", "Store"]

metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("product_key", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("md5", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

packages = sa.Table(
    "packages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "product_key",
        sa.String(64),
        sa.ForeignKey("products.product_key"),
        nullable=False,
    ),
    sa.Column("module", sa.String(64), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Column("scope", sa.String(8), nullable=False),  # "formal" | "test"
    sa.Column("serials", sa.Text, nullable=False),  # JSON list, for scope "test"
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("rollout", sa.Integer, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("signature", sa.Text, nullable=True),  # room for the signed manifest
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("product_key", "module", "version"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "package_id",
        sa.Integer,
        sa.ForeignKey("packages.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("blob", sa.String(64), sa.ForeignKey("blobs.sha256"), nullable=False),
    sa.Column("from_version", sa.String(64), nullable=True),  # NULL: the full image
    sa.Column("name", sa.String(128), nullable=False),
    sa.UniqueConstraint("package_id", "from_version"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("product_key", sa.String(64), primary_key=True),
    sa.Column("device_name", sa.String(64), primary_key=True),
    sa.Column("module", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(64), nullable=True),
    sa.Column("step", sa.Integer, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

progress = sa.Table(
    "progress",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("product_key", sa.String(64), nullable=False),
    sa.Column("device_name", sa.String(64), nullable=False),
    sa.Column("module", sa.String(64), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("desc", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("progress_device", "product_key", "device_name"),
)


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    md5: str


@dataclass(frozen=True)
class Artifact:
    """One file of a package: the full image (``from_version`` None) or a delta."""

    blob: Blob
    name: str
    from_version: str | None = None


@dataclass(frozen=True)
class Package:
    id: int
    product_key: str
    module: str
    version: str
    forced: bool
    scope: str
    serials: tuple[str, ...]
    title: str
    description: str
    rollout: int
    enabled: bool
    signature: str | None
    created_at: float
    full: Artifact
    deltas: tuple[Artifact, ...] = ()

    def to_json(self) -> dict[str, Any]:
        def artifact(a: Artifact) -> dict[str, Any]:
            return {
                "name": a.name,
                "fromVersion": a.from_version,
                "size": a.blob.size,
                "md5": a.blob.md5,
                "sha256": a.blob.sha256,
            }

        return {
            "id": self.id,
            "productKey": self.product_key,
            "module": self.module,
            "version": self.version,
            "forced": self.forced,
            "scope": self.scope,
            "serials": list(self.serials),
            "title": self.title,
            "description": self.description,
            "rollout": self.rollout,
            "enabled": self.enabled,
            "signature": self.signature,
            "createdAt": self.created_at,
            "full": artifact(self.full),
            "deltas": [artifact(d) for d in self.deltas],
        }


@dataclass
class PackageSpec:
    """What a publisher gives; names and versions are validated by the caller."""

    product_key: str
    module: str
    version: str
    full: str  # blob sha256
    full_name: str
    deltas: Sequence[tuple[str, str, str]] = ()  # (from_version, blob sha256, name)
    forced: bool = False
    scope: str = "formal"
    serials: Sequence[str] = ()
    title: str = ""
    description: str = ""
    rollout: int = 100
    enabled: bool = True
    signature: str | None = None


class BlobStore:
    """Image files named by SHA-256 in one directory; written once, atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise InputError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.directory / sha256

    def writer(self, max_size: int) -> BlobWriter:
        return BlobWriter(self, max_size)

    def adopt(self, path: Path) -> Blob:
        """Moves a finished file into the store (hashed in one pass, Rust)."""
        digests = hashing.hash_file(path, ("md5", "sha256"))
        blob = Blob(digests["sha256"], digests.size, digests["md5"])
        os.replace(path, self.path(blob.sha256))
        return blob

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


class BlobWriter:
    """Receives an upload in chunks, hashing as it goes (MD5 and SHA-256 in the Rust
    core, GIL released), and moves it into place only when complete."""

    def __init__(self, store: BlobStore, max_size: int) -> None:
        self.store = store
        self.max_size = max_size
        self.size = 0
        self._md5 = hashing.md5()
        self._sha256 = hashing.sha256()
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=store.directory)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_size:
            raise UploadTooLarge(self.max_size)
        self._md5.update(chunk)
        self._sha256.update(chunk)
        self._file.write(chunk)

    def finish(self) -> Blob:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        blob = Blob(self._sha256.hexdigest(), self.size, self._md5.hexdigest())
        os.replace(self._tmp, self.store.path(blob.sha256))
        return blob

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class UploadTooLarge(InputError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload is larger than the server's limit of {limit} bytes")
        self.hint = "raise the limit with `otaflash serve --max-upload`"


@dataclass
class _RuleCache:
    """Packages per (product, module) for the query path, so a query costs no SQL.

    Writes made through this Store clear it at once; ``ttl`` bounds how stale it
    can be when other servers share the database."""

    ttl: float
    entries: dict[tuple[str, str], tuple[float, list[Package]]] = field(default_factory=dict)
    known_products: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Store:
    def __init__(self, url: str, *, cache_ttl: float = 2.0) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url)
        metadata.create_all(self.engine)
        self._cache = _RuleCache(ttl=cache_ttl)

    def close(self) -> None:
        self.engine.dispose()

    def _begin(self) -> Any:
        return self.engine.begin()

    def _invalidate(self) -> None:
        with self._cache.lock:
            self._cache.entries.clear()
            self._cache.known_products.clear()

    # -- products and blobs --------------------------------------------------

    def product_exists(self, product_key: str) -> bool:
        with self._cache.lock:
            if product_key in self._cache.known_products:
                return True
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(products.c.product_key).where(products.c.product_key == product_key)
            ).first()
        if found:
            with self._cache.lock:
                self._cache.known_products.add(product_key)
        return found is not None

    def add_blob(self, blob: Blob) -> None:
        with self._begin() as conn:
            if conn.execute(sa.select(blobs.c.sha256).where(blobs.c.sha256 == blob.sha256)).first():
                return
            conn.execute(
                blobs.insert().values(
                    sha256=blob.sha256, size=blob.size, md5=blob.md5, created_at=time.time()
                )
            )

    def get_blob(self, sha256: str) -> Blob | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(blobs).where(blobs.c.sha256 == sha256)).first()
        return Blob(row.sha256, row.size, row.md5) if row else None

    def blob_in_use(self, conn: Connection, sha256: str) -> bool:
        return (
            conn.execute(sa.select(artifacts.c.id).where(artifacts.c.blob == sha256)).first()
            is not None
        )

    # -- packages ------------------------------------------------------------

    def create_package(self, spec: PackageSpec) -> Package:
        """Stores a package; InputError if a blob is missing or the version exists."""
        with self._begin() as conn:
            for sha in (spec.full, *(d[1] for d in spec.deltas)):
                if not conn.execute(sa.select(blobs.c.sha256).where(blobs.c.sha256 == sha)).first():
                    raise UnknownBlob(sha)
            exists = conn.execute(
                sa.select(packages.c.id).where(
                    packages.c.product_key == spec.product_key,
                    packages.c.module == spec.module,
                    packages.c.version == spec.version,
                )
            ).first()
            if exists:
                raise DuplicatePackage(spec.product_key, spec.module, spec.version, exists.id)
            if not conn.execute(
                sa.select(products.c.product_key).where(products.c.product_key == spec.product_key)
            ).first():
                conn.execute(
                    products.insert().values(product_key=spec.product_key, created_at=time.time())
                )
            package_id = self._insert_package(conn, spec)
        self._invalidate()
        package = self.get_package(int(package_id))
        assert package is not None
        return package

    def _insert_package(self, conn: Connection, spec: PackageSpec) -> int:
        try:
            inserted = conn.execute(
                packages.insert().values(
                    product_key=spec.product_key,
                    module=spec.module,
                    version=spec.version,
                    forced=spec.forced,
                    scope=spec.scope,
                    serials=json.dumps(sorted(set(spec.serials))),
                    title=spec.title,
                    description=spec.description,
                    rollout=spec.rollout,
                    enabled=spec.enabled,
                    signature=spec.signature,
                    created_at=time.time(),
                )
            ).inserted_primary_key
        except sa.exc.IntegrityError:  # the same version published at the same moment
            raise DuplicatePackage(spec.product_key, spec.module, spec.version, 0) from None
        if inserted is None:
            raise RuntimeError("the database gave no id for the new package")
        package_id = int(inserted[0])
        conn.execute(
            artifacts.insert(),
            [
                {
                    "package_id": package_id,
                    "blob": spec.full,
                    "from_version": None,
                    "name": spec.full_name,
                }
            ]
            + [
                {"package_id": package_id, "blob": sha, "from_version": source, "name": name}
                for source, sha, name in spec.deltas
            ],
        )
        return package_id

    def get_package(self, package_id: int) -> Package | None:
        found = self._load(packages.c.id == package_id)
        return found[0] if found else None

    def list_packages(
        self, product_key: str | None = None, module: str | None = None
    ) -> list[Package]:
        conditions = []
        if product_key is not None:
            conditions.append(packages.c.product_key == product_key)
        if module is not None:
            conditions.append(packages.c.module == module)
        return self._load(*conditions)

    def set_enabled(self, package_id: int, enabled: bool) -> Package | None:
        with self._begin() as conn:
            result = conn.execute(
                packages.update().where(packages.c.id == package_id).values(enabled=enabled)
            )
        self._invalidate()
        return self.get_package(package_id) if result.rowcount else None

    def delete_package(self, package_id: int, blob_store: BlobStore | None = None) -> bool:
        """Deletes a package; its files too unless another package still uses them."""
        with self._begin() as conn:
            shas = [
                row.blob
                for row in conn.execute(
                    sa.select(artifacts.c.blob).where(artifacts.c.package_id == package_id)
                )
            ]
            conn.execute(artifacts.delete().where(artifacts.c.package_id == package_id))
            deleted = conn.execute(packages.delete().where(packages.c.id == package_id)).rowcount
            orphans = [sha for sha in set(shas) if not self.blob_in_use(conn, sha)]
            for sha in orphans:
                conn.execute(blobs.delete().where(blobs.c.sha256 == sha))
        self._invalidate()
        if blob_store is not None:
            for sha in orphans:
                blob_store.remove(sha)
        return bool(deleted)

    def packages_for(self, product_key: str, module: str) -> list[Package]:
        """Enabled packages of one product module, from the rule cache."""
        key = (product_key, module)
        now = time.monotonic()
        with self._cache.lock:
            hit = self._cache.entries.get(key)
            if hit and now - hit[0] < self._cache.ttl:
                return hit[1]
        found = self._load(
            packages.c.product_key == product_key,
            packages.c.module == module,
            packages.c.enabled.is_(True),
        )
        with self._cache.lock:
            self._cache.entries[key] = (now, found)
        return found

    def _load(self, *conditions: Any) -> list[Package]:
        query = (
            sa.select(
                packages,
                artifacts.c.blob,
                artifacts.c.from_version,
                artifacts.c.name,
                blobs.c.size,
                blobs.c.md5,
            )
            .join(artifacts, artifacts.c.package_id == packages.c.id)
            .join(blobs, blobs.c.sha256 == artifacts.c.blob)
            .where(*conditions)
            .order_by(packages.c.id, artifacts.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        grouped: dict[int, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row.id, []).append(row)
        return [_package_from_rows(group) for group in grouped.values()]

    # -- devices and progress -------------------------------------------------

    def set_device_version(
        self, product_key: str, device_name: str, module: str, version: str
    ) -> None:
        self._upsert_device(product_key, device_name, module, version=version)

    def device_version(self, product_key: str, device_name: str, module: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(devices.c.version).where(
                    devices.c.product_key == product_key,
                    devices.c.device_name == device_name,
                    devices.c.module == module,
                )
            ).first()
        return row.version if row else None

    def add_progress(
        self, product_key: str, device_name: str, module: str, step: int, desc: str
    ) -> None:
        with self._begin() as conn:
            conn.execute(
                progress.insert().values(
                    product_key=product_key,
                    device_name=device_name,
                    module=module,
                    step=step,
                    desc=desc,
                    at=time.time(),
                )
            )
            self._upsert_device(product_key, device_name, module, step=step, conn=conn)

    def progress_of(self, product_key: str, device_name: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(progress)
                .where(progress.c.product_key == product_key, progress.c.device_name == device_name)
                .order_by(progress.c.id)
            ).all()
        return [{"module": r.module, "step": r.step, "desc": r.desc, "at": r.at} for r in rows]

    def device_state(self, product_key: str, device_name: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(devices)
                .where(devices.c.product_key == product_key, devices.c.device_name == device_name)
                .order_by(devices.c.module)
            ).all()
        return [
            {"module": r.module, "version": r.version, "step": r.step, "updatedAt": r.updated_at}
            for r in rows
        ]

    def _upsert_device(
        self,
        product_key: str,
        device_name: str,
        module: str,
        *,
        conn: Connection | None = None,
        **values: Any,
    ) -> None:
        if conn is None:
            with self._begin() as own:
                self._upsert_device(product_key, device_name, module, conn=own, **values)
            return
        values["updated_at"] = time.time()
        where = (
            devices.c.product_key == product_key,
            devices.c.device_name == device_name,
            devices.c.module == module,
        )
        if conn.execute(devices.update().where(*where).values(**values)).rowcount == 0:
            conn.execute(
                devices.insert().values(
                    product_key=product_key, device_name=device_name, module=module, **values
                )
            )


class UnknownBlob(InputError):
    def __init__(self, sha256: str) -> None:
        super().__init__(f"no uploaded file has SHA-256 {sha256}")
        self.hint = "upload the file first (POST /api/v1/uploads), then name its sha256"


class DuplicatePackage(InputError):
    def __init__(self, product_key: str, module: str, version: str, package_id: int) -> None:
        super().__init__(
            f"version {version} of {product_key}/{module} is already published (package "
            f"{package_id})"
        )
        self.hint = "publish a new version, or delete that package first"
        self.package_id = package_id


def _package_from_rows(rows: list[Any]) -> Package:
    first = rows[0]
    full: Artifact | None = None
    deltas: list[Artifact] = []
    for row in rows:
        artifact = Artifact(Blob(row.blob, row.size, row.md5), row.name, row.from_version)
        if row.from_version is None:
            full = artifact
        else:
            deltas.append(artifact)
    assert full is not None, "every package has its full image"
    return Package(
        id=first.id,
        product_key=first.product_key,
        module=first.module,
        version=first.version,
        forced=bool(first.forced),
        scope=first.scope,
        serials=tuple(json.loads(first.serials)),
        title=first.title,
        description=first.description,
        rollout=first.rollout,
        enabled=bool(first.enabled),
        signature=first.signature,
        created_at=first.created_at,
        full=full,
        deltas=tuple(deltas),
    )


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine
