"""The event store: a store URL turned into an eventsourcing application of runs.

``memory://``, ``sqlite:///relative.db`` / ``sqlite:////abs/path.db`` (``?lock_timeout=30``) and
``postgresql://user:password@host:5432/dbname?schema=name`` select eventsourcing's popo,
sqlite and postgres persistence modules. Tables are created on first use.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import BaseAggregate, DomainEventProtocol
from eventsourcing.persistence import InfrastructureFactory, Mapper, Notification, StoredEvent, Transcoder
from eventsourcing.utils import get_topic

from phaseledger.domain.errors import ConcurrencyConflict, CorruptEvent, RunNotFound, StoreUnavailable
from phaseledger.domain.journal import RecordedCall
from phaseledger.domain.run import WorkflowRun, project_run, restore_journal
from phaseledger.store.backends import Backend, open_backend
from phaseledger.store.backends.base import POPO_FACTORY, POSTGRES_FACTORY, SQLITE_FACTORY
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

if TYPE_CHECKING:
    from phaseledger.store.leasebook import LeaseBook
    from phaseledger.store.listener import AppendListener
    from phaseledger.store.runindex import RunIndex

T = TypeVar("T")
E = TypeVar("E", bound=DomainEventProtocol[str])

PendingEvents = Sequence[DomainEventProtocol[str]]
"""Events of one run to append, as ``run.collect_events()`` returns them."""

log = logging.getLogger("phaseledger.store")

DEFAULT_STORE = "sqlite:///phaseledger.db"
STORE_ENV_VAR = "PHASELEDGER_STORE"

JOURNAL_ROWS_ON_LOOP = 1000
"""The longest journal of a visit in progress a resume reads on the event loop's own thread
(see :meth:`Store.load_on_loop`): about 3 ms of reading at a few µs a row; longer ones are
read in a thread."""

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
            return cls(url, "memory", {"PERSISTENCE_MODULE": POPO_FACTORY})
        if scheme == "sqlite":
            path = unquote(url.split("://", 1)[1])
            path = path.removeprefix("/")  # sqlite:///rel.db, sqlite:////abs.db
            path = path.split("?", 1)[0]
            if not path:
                raise StoreUnavailable(f"store URL {url!r} names no file: use sqlite:///phaseledger.db")
            env = {
                "PERSISTENCE_MODULE": SQLITE_FACTORY,
                "SQLITE_DBNAME": path,
                # Seconds a write waits for another connection's lock before "database is locked".
                "SQLITE_LOCK_TIMEOUT": parse_qs(parts.query).get("lock_timeout", ["30"])[0],
            }
            return cls(url, "sqlite", env, sqlite_path=path)
        if scheme in ("postgresql", "postgres"):
            query = parse_qs(parts.query)
            schema = query.get("schema", ["public"])[0]
            env = {
                "PERSISTENCE_MODULE": POSTGRES_FACTORY,
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


SnapshotDecision = StoredEvent | None
"""The snapshot due with an append's last event, encoded from the run in memory; None when there is
none to take from it (then, if one is due, the append reads the state back from the store)."""


class Store:
    """Where runs live: loads and appends :class:`WorkflowRun` aggregates and reads their events.

    Everything else of a store (its run index, leases, listener, deleter, the home of its
    read models) comes from its :class:`~phaseledger.store.backends.Backend`, through the
    methods below: callers never ask which kind of store they talk to.

    Methods are synchronous (eventsourcing is); :meth:`call` makes one from an event loop
    without blocking it (in a thread, but for memory stores). Appends have an async twin,
    :meth:`append_async`, which on PostgreSQL needs no thread at all.

    ``cipher_key`` (default ``$PHASELEDGER_CIPHER_KEY``) encrypts and ``compress`` (default
    ``$PHASELEDGER_COMPRESS``) compresses what the store writes; see :mod:`._cipher`.
    """

    def __init__(self, url: str | None = None, *, snapshot_every: int | None = 100,
                 cipher_key: CipherKeys | None = None, compress: bool | None = None) -> None:
        self.url = StoreURL.parse(url)
        self.backend: Backend = open_backend(self.url)
        """What this kind of store is made of."""
        self.cipher_keys = resolve_cipher_keys(cipher_key)
        """The AES keys of the events (current first; see docs/encryption.md); ``()``: not encrypted."""
        self.compressed = resolve_compress(compress)
        """Whether event states are compressed before they are (encrypted and) stored."""
        self.codec_env = {
            CIPHER_KEY_ENV_VAR: ",".join(self.cipher_keys),
            COMPRESS_ENV_VAR: "1" if self.compressed else "0",
        }
        """The env entries that give an application built elsewhere this store's encryption and compression."""
        env = self.backend.application_env()
        env.update(self.codec_env)
        env["ORIGINATOR_ID_TYPE"] = "text"
        if snapshot_every:
            env["IS_SNAPSHOTTING_ENABLED"] = "y"
        with store_errors(self.url, "open store", any_error=True):  # psycopg, sqlite3, eventsourcing, OSError...
            self.backend.prepare()
            self.app = RunApplication(env=env)
            """The eventsourcing application (for tests and tools; the store's methods are the API)."""
        self.backend.opened(self.app)
        self.snapshot_every = snapshot_every
        self._driving = 0
        """Runs being driven in this process now (:meth:`driving`)."""
        self._driving_lock = threading.Lock()
        self.started_topic = get_topic(WorkflowRun.RunStarted)

    @property
    def encrypted(self) -> bool:
        """Whether the store encrypts what it writes (it reads plain events too)."""
        return bool(self.cipher_keys)

    @property
    def name(self) -> str:
        """The name of the store's application: what read models call its log in their tracking."""
        return self.app.name

    def close(self) -> None:
        """Release connections and files."""
        self.backend.close()
        self.app.close()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` (a blocking store call) from an event loop that keeps running meanwhile."""
        return await self.backend.call(fn, *args, **kwargs)

    # -- runs ----------------------------------------------------------------------------

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
        return self._skipping_mapper.to_domain_event(notification)

    @cached_property
    def _skipping_mapper(self) -> SkippingMapper:
        return SkippingMapper(self.app.mapper)

    def skipping_log(self) -> SkippingLog:
        """The store's log as an eventsourcing projection runner reads an application, with rows
        that cannot be read passed on as :class:`Unreadable` (for in-process subscribers)."""
        return SkippingLog(self.app.name, self.app.recorder, self._skipping_mapper)

    def read_back(self, event: E) -> E:
        """``event`` as the store reads it back (a value's Python type may change on the way)."""
        # The mapper returns an instance of the class the row's topic names: the class of ``event``.
        return self.app.mapper.to_domain_event(self.app.mapper.to_stored_event(event))  # type: ignore[return-value]

    @guarded("load run {run_id!r}")
    def load(self, run_id: str, version: int | None = None, *, journal: bool = True) -> WorkflowRun:
        """The run folded from its latest snapshot and the events after it (or at ``version``).

        Snapshots leave out the journal of the phase visit in progress (see
        :class:`WorkflowRun.Snapshot`): with ``journal`` (what a driver replaying the visit
        needs) its entries are read back from the visit's events; without it the run has
        :attr:`~WorkflowRun.journal_elided` set, and loading it reads a snapshot and at most
        ``snapshot_every`` events however long the run (what a view of it needs).

        Raises :class:`RunNotFound`, or :class:`CorruptEvent` when a row the run needs cannot
        be read. A snapshot that cannot be read is passed over: the run is folded from its
        events alone (they are all there unless the run was compacted).
        """
        run: WorkflowRun | None
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
        if journal and run.journal_elided is not None:
            self._restore_journal(run)
        return run

    async def load_on_loop(self, run_id: str) -> WorkflowRun:
        """:meth:`load`, by a resume on an event loop that drives nothing else, made on the
        loop's own thread as far as that is short.

        The run's snapshot and the events after it (at most ``snapshot_every``) are read on
        the loop; so is the journal of the visit in progress when it has at most
        :data:`JOURNAL_ROWS_ON_LOOP` events, else it is read in a thread (a visit's journal
        grows without bound). Only for a store whose :attr:`leases_on_loop`: its reads wait
        for no writer, and the process drives no other run the loop would hold up.
        """
        run = self.load(run_id, journal=False)
        elided = run.journal_elided
        if elided is not None:
            if elided - run.phase_entered_version <= JOURNAL_ROWS_ON_LOOP:
                self.restore_journal(run)
            else:
                await self.call(self.restore_journal, run)
        return run

    @property
    def leases_on_loop(self) -> bool:
        """Whether a resume may take its run's lease and load it on the event loop's thread now
        (see :meth:`~phaseledger.store.leasebook.LeaseBook.acquire_on_loop`): the store is a
        SQLite file, and no run is being driven in this process."""
        return self.backend.leases_on_loop and self._driving == 0

    @guarded("load run {run.id!r}")
    def restore_journal(self, run: WorkflowRun) -> None:
        """Read back the journal a run loaded with ``journal=False`` left out (see :meth:`load`)."""
        if run.journal_elided is not None:
            self._restore_journal(run)

    def _restore_journal(self, run: WorkflowRun) -> None:
        """Read back the journal entries a snapshot left out: the visit's events up to it."""
        elided, entered = run.journal_elided or 0, run.phase_entered_version
        if elided <= entered:  # nothing recorded in the visit before the snapshot
            restore_journal(run, ())
            return
        rows = self.backend.event_rows(run.id, entered, elided)
        if rows and rows[0][0] == entered + 1:
            restore_journal(run, self._entries(run.id, rows))
            return
        # Compacted: the visit's first events are gone, and the snapshot compaction left holds their entries.
        full = self._whole_snapshot(run.id, entered, elided)
        if full is None:
            raise CorruptEvent(run.id, entered + 1, "the events of its phase visit in progress were removed, "
                                                    "and no snapshot holds their journal")
        later = self.backend.event_rows(run.id, full.version, elided)
        restore_journal(run, self._entries(run.id, later), base=full.journal)

    def _entries(self, run_id: str, rows: Sequence[tuple[int, str, bytes]]) -> Iterator[tuple[str, RecordedCall]]:
        """The keys and journal entries the run's event ``rows`` record (rows of other events pass)."""
        read = cast(RunMapper, self.app.mapper).journal_entry
        for version, topic, state in rows:
            found = read(run_id, version, topic, state)
            if found is not None:
                yield found

    def _whole_snapshot(self, run_id: str, after: int, upto: int) -> WorkflowRun | None:
        """The run from its latest snapshot within ``(after, upto]`` taken with its journal, if any."""
        if self.app.snapshots is None:
            return None
        for snapshot in self.app.snapshots.get(run_id, gt=after, lte=upto, desc=True):
            run = snapshot.mutate(None)  # type: ignore[attr-defined]  # the store's snapshots are run snapshots
            if isinstance(run, WorkflowRun) and run.journal_elided is None:
                return run
        return None

    def _fold_events(self, run_id: str, version: int | None, unreadable: CorruptEvent) -> WorkflowRun | None:
        """The run folded from its events alone, after ``unreadable`` was met with a snapshot."""
        events = list(self.app.events.get(run_id, lte=version))  # an unreadable event raises here
        if not events or [e.originator_version for e in events] != list(range(1, len(events) + 1)):
            # Compacted: the snapshot stands for removed events, so the run needs it.
            raise CorruptEvent(run_id, unreadable.version, unreadable.reason, snapshot=True) from unreadable
        run = project_run(None, events)
        log.warning("run %r: a snapshot cannot be read (%s); folded the run from its events instead",
                    run_id, unreadable.reason)
        return run

    # -- appending -----------------------------------------------------------------------

    def save(self, run: WorkflowRun) -> int:
        """Append the run's pending events (see :meth:`append`)."""
        return self.append(run.collect_events(), run=run)

    def append(self, events: PendingEvents, *, run: WorkflowRun | None = None) -> int:
        """Append events of one run in one transaction; return the last notification id.

        Raises :class:`ConcurrencyConflict` when another writer appended first: then nothing
        was written and the caller's copy of the run is stale (reload it). The snapshots due
        at these events' versions (multiples of ``snapshot_every``; without the journal of the
        phase visit in progress, see :class:`WorkflowRun.Snapshot`) are stored with them: the
        last one from ``run``, the run the events were just collected from, when given and
        unchanged since, else from the state read back.
        """
        return self._append(events, self._snapshot_of(run, events))

    async def append_async(self, events: PendingEvents, *, run: WorkflowRun | None = None) -> int:
        """:meth:`append` for callers on an event loop, which keeps running meanwhile.

        Call it where ``run`` lives (on the loop): its snapshot is taken before the append
        leaves the loop. PostgreSQL appends from the loop itself (see
        :class:`~phaseledger.store.postgres.LoopAppender`); SQLite too, on the loop's thread,
        for a run driven alone in this process (see :meth:`driving` and
        :class:`~phaseledger.store.sqlite_appender.InlineAppender`), else in its writer
        thread, sharing commits with the appends of the runs driven with it
        (:class:`~phaseledger.store.group_commit.GroupCommitter`); memory at once.
        """
        if not events:
            return 0
        snapshot = self._snapshot_of(run, events)
        backend = self.backend
        if not backend.blocking:
            return self._append(events, snapshot)
        if not backend.appends_on_loop:
            return await backend.write(self._append, events, snapshot)
        stored = [self.app.mapper.to_stored_event(event) for event in events]
        with self._appending(events):
            ids = await backend.append_on_loop(stored, shared=self._driving > 1)
        if ids is None:  # the loop's connection is unavailable: the recorder's path retries
            return await backend.write(self._append, events, snapshot)
        if self._snapshot_due(events):
            await backend.call(self._store_snapshots, events[0].originator_id, events, snapshot)
        return ids[-1]

    @contextmanager
    def driving(self) -> Iterator[None]:
        """Count a run being driven in this process for as long as the block lasts (see :meth:`append_async`)."""
        with self._driving_lock:
            self._driving += 1
        try:
            yield
        finally:
            with self._driving_lock:
                self._driving -= 1

    def ready_appends(self) -> None:
        """On an event loop about to append: start what :meth:`append_async` needs there (PostgreSQL:
        the loop's connection) without waiting for it."""
        self.backend.ready_appends_on_loop()

    def _snapshot_of(self, run: WorkflowRun | None, events: PendingEvents) -> SnapshotDecision:
        """The snapshot due with ``events``, taken from ``run`` in memory and encoded (None: see
        :data:`SnapshotDecision`)."""
        if run is None or not (self.snapshot_every and events and self.app.snapshots is not None):
            return None
        last = events[-1].originator_version
        if last % self.snapshot_every or run.version != last or run.pending_events:
            return None  # none due, or not the run these events came from
        return self.app.mapper.to_stored_event(WorkflowRun.Snapshot.take(run))

    def _append(self, events: PendingEvents, snapshot: SnapshotDecision) -> int:
        if not events:
            return 0
        with self._appending(events):
            # The event store directly: Application.save adds a Protocol isinstance check per
            # event and snapshot bookkeeping this application does not use.
            recordings = self.app.events.put(events)
        if self._snapshot_due(events):
            self._store_snapshots(events[0].originator_id, events, snapshot)
        return recordings[-1].notification.id if recordings else 0

    def _appending(self, events: PendingEvents) -> store_errors:
        """Errors of an append: an integrity error means another writer appended first."""
        run_id, version = events[0].originator_id, events[0].originator_version
        return store_errors(self.url, f"append events of run {run_id!r}",
                            conflict=lambda: ConcurrencyConflict(run_id, version))

    def _snapshot_due(self, events: PendingEvents) -> bool:
        every = self.snapshot_every
        return bool(every and any(e.originator_version % every == 0 for e in events))

    @guarded("store a snapshot of run {run_id!r}")
    def _store_snapshots(self, run_id: str, events: PendingEvents, snapshot: SnapshotDecision) -> None:
        """Store the snapshots due at these (appended) events' versions; ``snapshot`` is the last
        one's, taken from the run in memory (None: none was)."""
        snapshots, every = self.app.snapshots, self.snapshot_every
        if snapshots is None or not every:
            return
        last = events[-1].originator_version
        for event in events:
            version = event.originator_version
            if version % every:
                continue
            if version == last and snapshot is not None:
                snapshots.recorder.insert_events([snapshot])
                continue
            # No run in memory at this version: read it back (its journal is not needed).
            snapshots.put([WorkflowRun.Snapshot.take(self.load(run_id, version, journal=False))])

    # -- transactional steps -------------------------------------------------------------

    @property
    def transactional(self) -> bool:
        """Whether the store lives in a database that transactional steps write to (SQLite, PostgreSQL)."""
        return self.backend.transactional

    def transact(self, run_id: str, owner: str | None, work: Callable[[Any], T],
                 events: Callable[[T], PendingEvents]) -> tuple[T, PendingEvents, int]:
        """Run ``work(connection)`` and append the run's events ``events(result)`` in one transaction
        of the store's database: both commit or neither does (see :mod:`.transactions`).

        ``owner``, when given, must still hold the run's lease when the events are appended
        (else :class:`~phaseledger.LeaseLost`). Returns the result, the events appended and
        the last notification id. What ``work`` raises propagates as it is, everything rolled
        back; a version another writer took first is a :class:`ConcurrencyConflict`. The
        snapshot due at the events' versions is stored after the commit.
        """
        mapper = self.app.mapper
        appended: list[PendingEvents] = []

        def finish(result: T) -> list[StoredEvent]:
            pending = events(result)
            appended.append(pending)
            return [mapper.to_stored_event(event) for event in pending]

        result, ids = self.backend.transact(run_id, owner, work, finish)
        pending = appended[-1]
        if self._snapshot_due(pending):
            try:
                self._store_snapshots(run_id, pending, None)
            except StoreUnavailable as exc:  # committed all the same: a later snapshot will do
                log.warning("run %r: no snapshot stored after a transactional step (%s)", run_id, exc)
        return result, pending, ids[-1] if ids else 0

    async def transact_async(self, run_id: str, owner: str | None, work: Callable[[Any], T],
                             events: Callable[[T], PendingEvents]) -> tuple[T, PendingEvents, int]:
        """:meth:`transact` from an event loop, which keeps running meanwhile (SQLite: in the writer thread)."""
        return await self.backend.write(self.transact, run_id, owner, work, events)

    # -- snapshots -----------------------------------------------------------------------

    @property
    def snapshotting(self) -> bool:
        """Whether the store keeps snapshots (``snapshot_every`` was not None)."""
        return self.app.snapshots is not None

    @guarded("store a snapshot of run {run_id!r}")
    def take_snapshot(self, run_id: str, version: int | None = None) -> None:
        """Store the run's folded state at ``version`` (latest when None), with its whole journal:
        compaction keeps it in place of the events it removes."""
        if self.app.snapshots is None:
            raise RuntimeError("snapshots are off in this store")
        run = self.load(run_id, version)
        if self.has_snapshot(run_id, run.version):  # one taken when it was due, without the journal
            self.backend.deleter(self).delete_snapshot(run_id, run.version)
        self.app.snapshots.put([WorkflowRun.Snapshot.take(run, journal=True)])

    @guarded("read the snapshots of run {run_id!r}")
    def has_snapshot(self, run_id: str, version: int) -> bool:
        """Whether a snapshot of the run at exactly ``version`` is stored."""
        return self.app.snapshots is not None and bool(list(self.app.snapshots.get(run_id, gt=version - 1,
                                                                                  lte=version)))

    # -- reading the log -----------------------------------------------------------------

    def events(self, run_id: str, *, gt: int | None = None, lte: int | None = None,
               limit: int | None = None) -> list[WorkflowRun.Event]:
        """The run's events in order (all of them, or those after ``gt`` up to ``lte``, at most ``limit``).

        Raises :class:`RunNotFound` for an unknown run (when ``gt`` is not given), and
        :class:`CorruptEvent` when one of them cannot be read.
        """
        with store_errors(self.url, f"read the events of run {run_id!r}"):
            events = list(self.app.events.get(run_id, gt=gt, lte=lte, limit=limit))
        if not events and not gt and not self.exists(run_id):
            raise RunNotFound(run_id)
        return events  # type: ignore[return-value]  # the mapper decodes a run's rows to run events

    @guarded("read the log")
    def notifications(self, after: int | None, limit: int, topics: Sequence[str] = ()) -> Sequence[Notification]:
        """Up to ``limit`` rows of the log after position ``after`` (of these topics, or all), in order."""
        return self.app.recorder.select_notifications(
            start=after or 0, limit=limit, topics=topics, inclusive_of_start=False)

    @guarded("read the log's position")
    def max_notification_id(self) -> int:
        """The position of the newest row of the log (0 when empty)."""
        return self.app.recorder.max_notification_id() or 0

    @guarded("count the rows of the log")
    def count_notifications(self, after: int | None, topics: Sequence[str]) -> int:
        """How many rows of the log with these topics follow position ``after``."""
        return self.backend.count_notifications(after, topics)

    def _started(self, page: int) -> Iterator[Notification]:
        """The ``RunStarted`` rows of the runs in the store, in the order the runs were started."""
        start = 0
        while True:
            with store_errors(self.url, "list the runs"):  # a generator: no @guarded
                batch = self.app.recorder.select_notifications(
                    start=start, limit=page, topics=(self.started_topic,), inclusive_of_start=False
                )
            if not batch:
                return
            for notification in batch:
                if not self.backend.keeps_deleted_notifications or self.exists(str(notification.originator_id)):
                    yield notification
            start = batch[-1].id

    def run_ids(self, *, page: int = 1000) -> Iterator[str]:
        """Every run id in the store, in the order the runs were started."""
        for notification in self._started(page):
            yield str(notification.originator_id)

    def started_events(self, *, page: int = 500) -> Iterator[WorkflowRun.RunStarted]:
        """The ``RunStarted`` event of every run in the store, in order (unreadable ones, of
        damaged runs, are passed over: see :meth:`read_notification`)."""
        for notification in self._started(page):
            event = self.read_notification(notification)
            if isinstance(event, WorkflowRun.RunStarted):
                yield event

    # -- other streams -------------------------------------------------------------------

    def stream(self, originator_id: str, *, lte: int | None = None) -> list[Any]:
        """The events of one of the store's other streams (not a run's), in order."""
        with store_errors(self.url, f"read stream {originator_id!r}"):
            return list(self.app.events.get(originator_id, lte=lte))

    def record(self, aggregate: BaseAggregate[str]) -> None:
        """Append an aggregate of another stream; :class:`ConcurrencyConflict` if it was advanced first."""
        pending = aggregate.collect_events()
        with store_errors(self.url, f"record stream {aggregate.id!r}",
                          conflict=lambda: ConcurrencyConflict(str(aggregate.id), pending[0].originator_version)):
            self.app.events.put(pending)

    # -- the backend's other parts -------------------------------------------------------

    def run_index(self, *, create: bool = True) -> RunIndex:
        """The store's run index (see :mod:`.runindex`); its tables are created unless ``create``
        is False (the caller creates them when it first finds them missing)."""
        with store_errors(self.url, "open the run index"):
            return self.backend.run_index(self, create=create)

    def lease_book(self) -> LeaseBook:
        """The store's run leases (see :mod:`.leasebook`)."""
        return self.backend.lease_book(self)

    def listener(self, on_notify: Callable[[], None]) -> AppendListener | None:
        """A listener that calls ``on_notify`` when events are committed (see :mod:`.listener`);
        None when the store cannot tell (then poll)."""
        return self.backend.listener(on_notify)

    def delete_events(self, run_id: str, below: int | None = None) -> tuple[int, int]:
        """Delete the run's events 1 < version < ``below`` and snapshots < ``below``; all of
        the run when ``below`` is None. Returns (events, snapshots) removed (for retention)."""
        return self.backend.deleter(self).delete(run_id, below)

    def holds_newest_row(self, run_id: str) -> bool:
        """Whether deleting the run would hand its newest notification id on to the next event
        (SQLite), so that read models which tracked that id would skip the event."""
        return self.backend.deleter(self).holds_newest_row(run_id)

    @property
    def in_process(self) -> bool:
        """Whether the store exists only in this process's objects (``memory://``)."""
        return self.backend.in_process

    @property
    def report_dialect(self) -> str:
        """The SQL dialect of the database of :meth:`report_infrastructure`."""
        return self.backend.report_dialect

    def report_infrastructure(self, name: str) -> InfrastructureFactory[Any]:
        """The eventsourcing infrastructure holding read models named ``name`` next to the store."""
        return self.backend.report_infrastructure(name)

    def subscriber_env(self) -> dict[str, str] | None:
        """Settings of an application of its own that reads and subscribes to the store's log as
        this store does (its encryption included); None when the store has no subscriptions."""
        env = self.backend.subscriber_env()
        return None if env is None else {**env, **self.codec_env}


@dataclass(frozen=True)
class SkippingLog:
    """What an eventsourcing projection runner reads of an application: its name, its log and
    a :class:`SkippingMapper` (closing it closes nothing: the store owns the application)."""

    name: str
    recorder: Any
    mapper: SkippingMapper

    def close(self) -> None:
        """The store's application stays open."""
