"""The event store: a store URL turned into an eventsourcing application of runs.

``memory://``, ``sqlite:///relative.db`` / ``sqlite:////abs/path.db`` (``?lock_timeout=30``) and
``postgresql://user:password@host:5432/dbname?schema=name`` select eventsourcing's popo,
sqlite and postgres persistence modules. Tables are created on first use.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import get_topic

from phaseledger.domain.errors import ConcurrencyConflict, CorruptEvent, RunNotFound, StoreUnavailable
from phaseledger.domain.run import WorkflowRun, project_run
from phaseledger.store.cipher import (
    CIPHER_KEY_ENV_VAR,
    COMPRESS_ENV_VAR,
    CipherKeys,
    make_mapper,
    parse_cipher_keys,
    parse_compress,
    resolve_cipher_keys,
    resolve_compress,
)
from phaseledger.store.codec import FastJSONTranscoder
from phaseledger.store.faults import guarded, store_errors
from phaseledger.store.mapper import RunMapper, SkippingMapper, Unreadable

log = logging.getLogger("phaseledger.store")

DEFAULT_STORE = "sqlite:///phaseledger.db"
STORE_ENV_VAR = "PHASELEDGER_STORE"

RUN_TOPICS: frozenset[str] = frozenset(
    get_topic(cls) for cls in vars(WorkflowRun).values()
    if isinstance(cls, type) and issubclass(cls, WorkflowRun.Event) and cls is not WorkflowRun.Event
)
"""The topics of run events. Only runs are runs: a row of the log belongs to a run when its
topic is one of these, and every reader of the whole log (run ids, the run index, the
reports) keeps to them, so the store's other streams (its identity) are never taken for runs."""


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: which backend and how eventsourcing is configured for it."""

    url: str
    backend: str
    """``memory``, ``sqlite`` or ``postgresql``."""
    env: dict[str, str]
    sqlite_path: str | None = None
    postgres_conninfo: str | None = None
    postgres_schema: str | None = None

    @classmethod
    def parse(cls, url: str | None) -> StoreURL:
        """Parse a store URL (None: ``$PHASELEDGER_STORE``, then the SQLite default)."""
        url = url or os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "memory":
            return cls(url, "memory", {"PERSISTENCE_MODULE": "eventsourcing.popo"})
        if scheme == "sqlite":
            path = unquote(url.split("://", 1)[1])
            path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db, sqlite:////abs.db
            path = path.split("?", 1)[0]
            if not path:
                raise StoreUnavailable(f"store URL {url!r} names no file: use sqlite:///phaseledger.db")
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": path,
                # Seconds a write waits for another connection's lock before "database is locked".
                "SQLITE_LOCK_TIMEOUT": parse_qs(parts.query).get("lock_timeout", ["30"])[0],
            }
            return cls(url, "sqlite", env, sqlite_path=path)
        if scheme in ("postgresql", "postgres"):
            query = parse_qs(parts.query)
            schema = query.get("schema", ["public"])[0]
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")) or "postgres",
                "POSTGRES_HOST": parts.hostname or "127.0.0.1",
                "POSTGRES_PORT": str(parts.port or 5432),
                "POSTGRES_USER": unquote(parts.username or "postgres"),
                "POSTGRES_PASSWORD": unquote(parts.password or ""),
                "POSTGRES_SCHEMA": schema,
                "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", ["10"])[0],
                # Connections kept open; more are made on demand, up to pool_size + max_overflow.
                # The pool hands out the most recently used first, so one serves a lone run.
                "POSTGRES_POOL_SIZE": query.get("pool_size", ["1"])[0],
                "POSTGRES_MAX_OVERFLOW": query.get("max_overflow", ["10"])[0],
                # No ping before each use of a pooled connection: it costs a round trip per
                # append and read, and eventsourcing's recorders retry on a broken connection.
                "POSTGRES_PRE_PING": query.get("pre_ping", ["n"])[0],
                "POSTGRES_ENABLE_DB_FUNCTIONS": "n",  # 'y' drops tracking rows in 9.5
            }
            conninfo = (
                f"host={env['POSTGRES_HOST']} port={env['POSTGRES_PORT']} dbname={env['POSTGRES_DBNAME']} "
                f"user={env['POSTGRES_USER']} connect_timeout={env['POSTGRES_CONNECT_TIMEOUT']}"
            )
            if env["POSTGRES_PASSWORD"]:
                conninfo += f" password={env['POSTGRES_PASSWORD']}"
            return cls(url, "postgresql", env, postgres_conninfo=conninfo, postgres_schema=schema)
        raise StoreUnavailable(
            f"unsupported store URL {url!r}: use memory://, sqlite:///path.db or "
            "postgresql://user:password@host:5432/dbname"
        )

    @property
    def redacted(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        parts = urlsplit(self.url)
        if parts.password:
            return self.url.replace(f":{parts.password}@", ":***@", 1)
        return self.url


class RunApplication(Application[str]):
    """The eventsourcing application that stores workflow runs (one aggregate per run).

    Its mapper encrypts and compresses as the env entries ``PHASELEDGER_CIPHER_KEY`` and
    ``PHASELEDGER_COMPRESS`` say (see :mod:`._cipher`); :class:`Store` sets both from its
    options, so an application built with :attr:`Store.codec_env` (a projection runner's) reads
    and writes what the store does.
    """

    name = "phaseledger"
    snapshotting_projectors = {WorkflowRun: project_run}  # noqa: RUF012

    def construct_transcoder(self) -> Transcoder:
        """eventsourcing's JSON format, written and read by orjson (see :mod:`._codec`)."""
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def construct_mapper(self) -> Mapper[str]:
        """The mapper: the cipher and compressor of the store's settings (none when off), and
        :class:`CorruptEvent` for a row it cannot read (see :mod:`._mapper`).

        The settings are read under their exact names: eventsourcing's own ``CIPHER_KEY``,
        ``CIPHER_TOPIC`` and ``COMPRESSOR_TOPIC`` are not used.
        """
        keys = parse_cipher_keys(dict.get(self.env, CIPHER_KEY_ENV_VAR), source=f"${CIPHER_KEY_ENV_VAR}")
        compress = parse_compress(dict.get(self.env, COMPRESS_ENV_VAR))
        return make_mapper(self.construct_transcoder(), keys, compress, mapper_class=RunMapper)


NOT_WANTED = object()
"""What :meth:`Store.prepare_snapshot` notes for a version at which no snapshot is wanted."""


def snapshot_wanted(version: int, phase_entered_version: int, every: int) -> bool:
    """Whether the run's snapshot at ``version`` (a multiple of ``every``) is worth storing.

    A snapshot holds the journal of the current phase visit, so in a long visit each one
    is as large as the visit so far, and one every ``every`` events would store a quadratic
    amount. Within a visit, snapshots are therefore kept at the first multiple of ``every``
    past ``every``, 2, 4, 8... times ``every`` events into it: what they store grows
    linearly with the visit, and a resume still reads at most about half the visit's
    events after its latest snapshot (resuming replays the whole visit anyway). Visits
    shorter than ``2 * every`` events are snapshotted every ``every`` events.
    """
    into = version - phase_entered_version
    if into < 2 * every:
        return True
    mark = every << ((into // every).bit_length() - 1)  # the largest every * 2**k <= into
    return into - mark < every


class Store:
    """Where runs live: loads and saves :class:`WorkflowRun` aggregates and reads their events.

    Methods are synchronous (eventsourcing is); the engine calls them from a worker
    thread for SQLite and PostgreSQL so the event loop keeps running. The journal's
    appends have an async twin, :meth:`save_events_async`, which on PostgreSQL needs no
    thread at all.

    ``cipher_key`` (default ``$PHASELEDGER_CIPHER_KEY``) encrypts and ``compress`` (default
    ``$PHASELEDGER_COMPRESS``) compresses what the store writes; see :mod:`._cipher`.
    """

    def __init__(self, url: str | None = None, *, snapshot_every: int | None = 100,
                 cipher_key: CipherKeys | None = None, compress: bool | None = None) -> None:
        self.url = StoreURL.parse(url)
        self.cipher_keys = resolve_cipher_keys(cipher_key)
        """The AES keys of the events (current first; see docs/encryption.md); ``()``: not encrypted."""
        self.compressed = resolve_compress(compress)
        """Whether event states are compressed before they are (encrypted and) stored."""
        self.codec_env = {
            CIPHER_KEY_ENV_VAR: ",".join(self.cipher_keys),
            COMPRESS_ENV_VAR: "1" if self.compressed else "0",
        }
        """The env entries that give an application built elsewhere this store's encryption and compression."""
        env = dict(self.url.env)
        env.update(self.codec_env)
        env["ORIGINATOR_ID_TYPE"] = "text"
        if self.url.backend == "postgresql":
            from phaseledger.store.postgres import StoreFactory

            env["PERSISTENCE_MODULE"] = get_topic(StoreFactory)
        if snapshot_every:
            env["IS_SNAPSHOTTING_ENABLED"] = "y"
        with store_errors(self.url, "open store", any_error=True):  # psycopg, sqlite3, eventsourcing, OSError...
            if self.url.sqlite_path:
                Path(self.url.sqlite_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.app = RunApplication(env=env)
        self.snapshot_every = snapshot_every
        self._loop_appender: Any = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="phaseledger-writer") if self.url.sqlite_path else None
        if self.url.backend == "postgresql":
            from phaseledger.store.postgres import LoopAppender

            self._loop_appender = LoopAppender(self.app.recorder, self.url.postgres_conninfo or "")  # type: ignore[arg-type]
        self._prepared: dict[tuple[str, int], StoredEvent | object] = {}
        """Snapshots made by :meth:`prepare_snapshot`, waiting for their events to be saved."""
        self.started_topic = get_topic(WorkflowRun.RunStarted)

    @property
    def encrypted(self) -> bool:
        """Whether the store encrypts what it writes (it reads plain events too)."""
        return bool(self.cipher_keys)

    @property
    def is_memory(self) -> bool:
        """True for ``memory://`` stores (calls are cheap enough to make on the loop)."""
        return self.url.backend == "memory"

    def close(self) -> None:
        """Release connections and files."""
        if self._loop_appender is not None:
            self._loop_appender.close()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        self.app.close()

    @guarded("read run {run_id!r}")
    def exists(self, run_id: str) -> bool:
        """Whether a run with this id has been started (its first row is read, not decoded)."""
        first = self.app.recorder.select_events(run_id, lte=1)
        return bool(first) and self.is_run_topic(first[0].topic)

    def is_run_topic(self, topic: str) -> bool:
        """Whether a row of the log with this topic belongs to a run (see :data:`RUN_TOPICS`)."""
        return topic in RUN_TOPICS

    def runs_in(self, notifications: Iterable[StoredEvent]) -> dict[str, int]:
        """The runs these rows of the log belong to, each with its highest version among them.

        Rows of the store's other streams are left out.
        """
        runs: dict[str, int] = {}
        for row in notifications:
            if row.topic in RUN_TOPICS:
                run_id = str(row.originator_id)
                runs[run_id] = max(runs.get(run_id, 0), row.originator_version)
        return runs

    def read_notification(self, notification: StoredEvent) -> WorkflowRun.Event | Unreadable:
        """The event a row of the log holds, or :class:`Unreadable` (and a warning) when it cannot
        be read: for followers of the whole log, which pass a damaged run's row and go on."""
        return self._skipping_mapper.to_domain_event(notification)  # type: ignore[no-any-return]

    @cached_property
    def _skipping_mapper(self) -> SkippingMapper:
        return SkippingMapper(self.app.mapper)

    @guarded("load run {run_id!r}")
    def load(self, run_id: str, version: int | None = None) -> WorkflowRun:
        """The run folded from its latest snapshot and the events after it (or at ``version``).

        Raises :class:`RunNotFound`, or :class:`CorruptEvent` when a row the run needs cannot
        be read. A snapshot that cannot be read is passed over: the run is folded from its
        events alone (they are all there unless the run was compacted).
        """
        try:
            run = self.app.repository.get(run_id, version=version, projector_func=project_run)
        except AggregateNotFoundError:
            raise RunNotFound(run_id) from None
        except CorruptEvent as exc:
            if self.app.snapshots is None:
                raise
            run = self._fold_events(run_id, version, exc)
        if not isinstance(run, WorkflowRun):  # another stream of the store, not a run
            raise RunNotFound(run_id)
        return run

    def _fold_events(self, run_id: str, version: int | None, unreadable: CorruptEvent) -> WorkflowRun:
        """The run folded from its events alone, after ``unreadable`` was met with a snapshot."""
        events = list(self.app.events.get(run_id, lte=version))  # an unreadable event raises here
        if not events or [e.originator_version for e in events] != list(range(1, len(events) + 1)):
            # Compacted: the snapshot stands for removed events, so the run needs it.
            raise CorruptEvent(run_id, unreadable.version, unreadable.reason, snapshot=True) from unreadable
        run = project_run(None, events)
        log.warning("run %r: a snapshot cannot be read (%s); folded the run from its events instead",
                    run_id, unreadable.reason)
        return run  # type: ignore[return-value]

    def save(self, run: WorkflowRun) -> int:
        """Append the run's pending events (see :meth:`save_events`)."""
        events = run.collect_events()
        self.prepare_snapshot(run, events)
        return self.save_events(run.id, events)

    def prepare_snapshot(self, run: WorkflowRun, events: Sequence[WorkflowRun.Event]) -> None:
        """Take the snapshot due with ``events`` (just collected from ``run``) from the run in memory.

        When the last event's version is a multiple of ``snapshot_every`` (always, for
        runs committing every step), the snapshot at that version is the run as it is now:
        it is encoded here (or found not wanted, see :func:`snapshot_wanted`) and stored by
        the :meth:`save_events` call for these events, so nothing is read back from the
        store. Call this where the run lives (on the event loop), not in a thread while the
        run may change.
        """
        if not (self.snapshot_every and events and self.app.snapshots is not None):
            return
        last = events[-1].originator_version
        if last % self.snapshot_every:
            return
        if run.version != last or run.pending_events:
            return  # not the run these events came from: save_events reads the state back
        wanted = snapshot_wanted(last, run.phase_entered_version, self.snapshot_every)
        self._prepared[(run.id, last)] = (
            self.app.mapper.to_stored_event(WorkflowRun.Snapshot.take(run)) if wanted else NOT_WANTED
        )

    def save_events(self, run_id: str, events: Sequence[WorkflowRun.Event]) -> int:
        """Append events of one run in one transaction; return the last notification id.

        Raises :class:`ConcurrencyConflict` when another writer appended first: then nothing
        was written and the caller's copy of the run is stale (reload it). Snapshots are
        taken at versions that are multiples of ``snapshot_every``: the one made by
        :meth:`prepare_snapshot` for these events when there is one, else from the state
        read back from the store.
        """
        return self._save_events(run_id, events)

    async def save_events_async(self, run_id: str, events: Sequence[WorkflowRun.Event]) -> int:
        """:meth:`save_events` for callers on an event loop, which keeps running meanwhile.

        On PostgreSQL the append is sent from the loop itself (see
        :class:`~phaseledger.store.postgres.LoopAppender`) and :meth:`save_events` is not
        called. SQLite appends call it in the store's writer thread: SQLite takes one writer
        at a time anyway, and one warm thread hands over faster than a pool of them. Memory
        stores append at once.
        """
        if self.is_memory:
            return self.save_events(run_id, events)
        if self._loop_appender is None or not events:
            return await asyncio.get_running_loop().run_in_executor(self._writer, self.save_events, run_id, events)
        stored = [self.app.mapper.to_stored_event(event) for event in events]
        snapshot = self._prepared.pop((run_id, events[-1].originator_version), None)
        with self._appending(run_id, events):
            ids = await self._loop_appender.append(stored)
        if ids is None:  # the loop's connection is unavailable: the recorder's path retries
            return await asyncio.to_thread(self._save_events, run_id, events, snapshot)
        if self._snapshot_due(events):
            await asyncio.to_thread(self._store_snapshots, run_id, events, snapshot)
        return ids[-1]

    def _save_events(self, run_id: str, events: Sequence[WorkflowRun.Event],
                     snapshot: StoredEvent | object | None = None) -> int:
        if not events:
            return 0
        # Taken before the append: after a conflict these versions mean other events.
        snapshot = snapshot or self._prepared.pop((run_id, events[-1].originator_version), None)
        with self._appending(run_id, events):
            # The event store directly: Application.save adds a Protocol isinstance check per
            # event and snapshot bookkeeping this application does not use.
            recordings = self.app.events.put(events)
        if self._snapshot_due(events):
            self._store_snapshots(run_id, events, snapshot)
        return recordings[-1].notification.id if recordings else 0

    def _appending(self, run_id: str, events: Sequence[WorkflowRun.Event]) -> store_errors:
        """Errors of an append: an integrity error means another writer appended first."""
        version = events[0].originator_version
        return store_errors(self.url, f"append events of run {run_id!r}",
                            conflict=lambda: ConcurrencyConflict(run_id, version))

    def _snapshot_due(self, events: Sequence[WorkflowRun.Event]) -> bool:
        return bool(self.snapshot_every) and any(e.originator_version % self.snapshot_every == 0 for e in events)

    @guarded("store a snapshot of run {run_id!r}")
    def _store_snapshots(self, run_id: str, events: Sequence[WorkflowRun.Event],
                         snapshot: StoredEvent | object | None) -> None:
        """Store the snapshots wanted at these (appended) events' versions; ``snapshot`` is
        what :meth:`prepare_snapshot` decided for the last one (None: nothing)."""
        snapshots = self.app.snapshots
        if snapshots is None:
            return
        last = events[-1].originator_version
        for event in events:
            version = event.originator_version
            if version % self.snapshot_every:
                continue
            if version == last and snapshot is not None:  # decided from the run in memory
                if snapshot is not NOT_WANTED:
                    snapshots.recorder.insert_events([snapshot])  # type: ignore[list-item]
                continue
            run = self.load(run_id, version)  # no run in memory at this version: read it back
            if snapshot_wanted(version, run.phase_entered_version, self.snapshot_every):
                snapshots.put([WorkflowRun.Snapshot.take(run)])

    @guarded("store a snapshot of run {run_id!r}")
    def take_snapshot(self, run_id: str, version: int | None = None) -> None:
        """Store the run's folded state at ``version`` (latest when None)."""
        self.app.take_snapshot(run_id, version=version, projector_func=project_run)

    def events(self, run_id: str, *, gt: int | None = None, lte: int | None = None) -> list[WorkflowRun.Event]:
        """The run's events in order (all of them, or those after ``gt`` up to ``lte``).

        Raises :class:`RunNotFound` for an unknown run (when ``gt`` is not given), and
        :class:`CorruptEvent` when one of them cannot be read.
        """
        with store_errors(self.url, f"read the events of run {run_id!r}"):
            events = list(self.app.events.get(run_id, gt=gt, lte=lte))
        if not events and not gt and not self.exists(run_id):
            raise RunNotFound(run_id)
        return events  # type: ignore[return-value]

    def run_ids(self, *, page: int = 1000) -> Iterator[str]:
        """Every run id in the store, in the order the runs were started."""
        start = 0
        while True:
            with store_errors(self.url, "list the runs"):  # a generator: no @guarded
                batch: Sequence[Any] = self.app.recorder.select_notifications(
                    start=start, limit=page, topics=(self.started_topic,), inclusive_of_start=False
                )
            if not batch:
                return
            for notification in batch:
                run_id = str(notification.originator_id)
                # memory:// keeps removed runs in its notification list (ids are positions)
                if not self.is_memory or self.exists(run_id):
                    yield run_id
            start = batch[-1].id
