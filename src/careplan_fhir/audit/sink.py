"""Store AuditEvents off the request path: a bounded queue and one writer thread.

A request only enqueues what its event is made of (:meth:`AuditSink.submit_facts`; whole events
through :meth:`AuditSink.submit`); one background thread builds the events, takes them off the
queue and stores them in the audit trail's own table
(:mod:`careplan_fhir.storage.audit_log`; searchable as AuditEvents:
https://hl7.org/fhir/R4/auditevent.html#search), up to ``batch_size`` per transaction (500;
200 on SQLite, whose single write turn a batch holds) and at least every ``interval`` seconds.

Nothing is dropped: when ``capacity`` events are waiting, a new request waits for room before
it runs (:meth:`AuditSink.admit`, back-pressure) instead of losing its event, a failed batch is
written again, and :meth:`AuditSink.stop` writes everything still queued before it returns.
The wait comes before the request, not after its response: a client whose response has been
sent sends its next request at once, so waiting afterwards let finished requests pile up by
the hundred, still "in flight", until the load shedder refused everyone with 503s.
:meth:`AuditSink.flush` waits until every event submitted before it is stored (tests,
shutdown).

The server runs this writer in a process of its own (audit/process_sink.py), where its Python
does not compete with the event loop for the GIL; in the server's own process it is the writer
for in-memory databases and for apps built with an injected clock (tests).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import anyio
from sqlalchemy import Engine

from careplan_fhir.fhir.dates import to_naive_utc
from careplan_fhir.fhir.ids import time_ordered_ids
from careplan_fhir.storage.audit_log import AuditLog, prepare_event
from careplan_fhir.storage.db import begin_write
from careplan_fhir.storage.repository import stamp

from .events import AuditFacts, event_from_facts

logger = logging.getLogger(__name__)

Event = dict[str, Any]


class AuditWriter(Protocol):
    """What the audit middleware and the app need of an audit writer (thread or process)."""

    written: int

    async def admit(self) -> None: ...

    def submit(self, event: Event) -> None: ...

    def submit_facts(self, facts: AuditFacts) -> None: ...

    @property
    def pending(self) -> int: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 60.0) -> None: ...

    def flush(self, timeout: float = 30.0) -> None: ...


class Progress:
    """How many events a writer was given and how many are settled (stored or lost), with a
    wait for the settled count; the counts of both writers, thread and process."""

    def __init__(self) -> None:
        #: Held while counting; a writer may hold it for its own state too.
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)
        self.submitted = 0
        self.settled = 0

    @property
    def pending(self) -> int:
        """Events submitted and not yet settled."""
        with self.lock:
            return max(0, self.submitted - self.settled)

    def submit(self) -> None:
        with self.lock:
            self.submitted += 1

    def settle(self, count: int) -> None:
        """Count ``count`` events as settled (the caller holds :attr:`lock`)."""
        self.settled += count
        self._changed.notify_all()

    def wait(self, target: int, timeout: float, writer: str) -> None:
        """Wait until ``target`` events are settled; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.settled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{writer}: {target - self.settled} events not stored")
                self._changed.wait(remaining)


class AuditSink:
    """Batches AuditEvents into the database from one background thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        now: Callable[[], datetime],
        new_id: Callable[[], str] | None = None,
        batch_size: int | None = None,
        interval: float = 0.2,
        capacity: int = 20_000,
        on_stored: Callable[[int, int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.now = now
        # Audit ids are the sink's own: its thread must not share an id factory with requests.
        # None: version 7 UUIDs, made a batch at a time (time_ordered_ids).
        self.new_id = new_id
        # SQLite has one writer at a time: smaller batches hold the write turn for a few
        # milliseconds only, so a request's create never waits long behind the audit trail.
        self.batch_size = batch_size or (200 if engine.dialect.name == "sqlite" else 500)
        self.interval = interval
        self.capacity = capacity
        # Unbounded: admission (admit) bounds it to capacity plus the requests in flight.
        self._queue: queue.Queue[Event | AuditFacts] = queue.Queue()
        #: Called after each batch with how many of its events were stored and how many lost
        #: (only at shutdown, after five failed attempts).
        self.on_stored = on_stored
        self._progress = Progress()
        #: Events stored so far, batches committed and write failures (each retried).
        self.written = 0
        self.batches = 0
        self.failures = 0
        #: Events given up at shutdown after repeated failures (logged as errors).
        self.lost = 0
        self._hurry = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- request side ----------------------------------------------------------------------

    async def admit(self) -> None:
        """Wait, before a request runs, while ``capacity`` events are waiting to be stored."""
        while self._queue.qsize() >= self.capacity and self._thread is not None:
            self._hurry.set()
            await anyio.sleep(0.002)

    def submit(self, event: Event) -> None:
        """Queue ``event`` (never blocks: :meth:`admit` is the back-pressure)."""
        self._queue.put_nowait(event)
        self._progress.submit()

    def submit_facts(self, facts: AuditFacts) -> None:
        """Queue the facts of an event; the writer builds the event (never blocks)."""
        self._queue.put_nowait(facts)
        self._progress.submit()

    def wait_for_room(self, timeout: float = 60.0) -> None:
        """:meth:`admit` for producers in threads (benchmarks, tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.qsize() >= self.capacity and time.monotonic() < deadline:
            time.sleep(0.001)

    @property
    def pending(self) -> int:
        """Events submitted and not yet stored."""
        return self._progress.pending

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="audit-sink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Store everything queued, then end the writer thread."""
        self._stopping.set()
        self._hurry.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.error("audit sink did not finish within %.0f s", timeout)
                return
        self._drain()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event submitted before this call is stored."""
        with self._progress.lock:
            target = self._progress.submitted
        if self._thread is None or not self._thread.is_alive():
            self._drain()
            return
        self._hurry.set()
        self._progress.wait(target, timeout, "audit sink")

    # -- writer side -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self.store(batch)
            elif self._stopping.is_set() and self._queue.empty():
                return

    def _next_batch(self) -> list[Event | AuditFacts]:
        """Up to ``batch_size`` events: the first to arrive, then what comes within ``interval``."""
        try:
            first = self._queue.get(timeout=self.interval)
        except queue.Empty:
            self._hurry.clear()
            return []
        batch = [first]
        deadline = time.monotonic() + self.interval
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._hurry.is_set():
                break
            try:
                batch.append(self._queue.get(timeout=min(remaining, 0.02)))
            except queue.Empty:
                continue
        return batch

    def _drain(self) -> None:
        """Store everything queued, in the calling thread (no writer thread running)."""
        while True:
            batch: list[Event | AuditFacts] = []
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return
            self.store(batch)

    def store(self, batch: list[Event | AuditFacts], *, final: bool = False) -> None:
        """Write one batch now, in the calling thread, retrying with growing pauses until it
        is stored (the writer thread's step; the writer process calls it directly). Stopping
        (or ``final``), it gives up after five attempts and counts the batch as lost."""
        pause = 0.05
        attempts = 0
        stored = True
        while True:
            attempts += 1
            try:
                self._write(batch)
                break
            except Exception:  # noqa: BLE001 - the batch is kept and written again
                self.failures += 1
                # No event content in the log: only how many and how often.
                logger.warning(
                    "audit sink: storing %d events failed (attempt %d); retrying",
                    len(batch),
                    attempts,
                    exc_info=attempts == 1,
                )
                if (final or self._stopping.is_set()) and attempts >= 5:
                    logger.error("audit sink: %d events could not be stored", len(batch))
                    self.lost += len(batch)
                    stored = False
                    break
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
        with self._progress.lock:
            self._progress.settle(len(batch))
        if self.on_stored is not None:
            self.on_stored(len(batch) if stored else 0, 0 if stored else len(batch))
        if self._queue.empty():
            self._hurry.clear()

    def _write(self, batch: list[Event | AuditFacts]) -> None:
        """Build and prepare the batch's rows, then take the write turn only to insert them.

        The preparing (building events from their facts, stamping, extracting search values:
        about 50 µs of Python an event) happens before the transaction, so SQLite's single write
        turn is held for the inserts alone. (Giving the GIL away every few events, to let
        requests in sooner, was measured and made everything slower: the writer fell behind and
        requests waited for room.)
        """
        new_id = self.new_id
        ids = time_ordered_ids(len(batch)) if new_id is None else [new_id() for _ in batch]
        # One moment for the batch: its events are stored by one transaction.
        moment = self.now()
        stored_at = to_naive_utc(moment)
        prepared = []
        for resource_id, item in zip(ids, batch, strict=True):
            event = item if isinstance(item, dict) else event_from_facts(item)
            raw = stamp(event, resource_id, 1, moment)
            prepared.append(prepare_event(resource_id, stored_at, raw, event))
        with self.engine.connect() as connection:
            begin_write(connection, wait=True)
            AuditLog(connection).insert_prepared(prepared)
            connection.commit()
        self.written += len(batch)
        self.batches += 1
