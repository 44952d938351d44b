"""Group commit: the plain creates that arrive together share one transaction.

A create's own inserts take a fraction of what its COMMIT costs (on SQLite the commit writes
every page the create touched to the write-ahead log; on PostgreSQL it waits for the WAL flush),
and most of those pages are the same for creates made together: the last leaf of each key
index, the pages of the same patient's index entries. Measured in-process on the 100,000-CarePlan
benchmark database: 777 creates/s committing each, 3,793/s committing eight at a time.

:class:`GroupCommit` collects the creates the fast path (rest/fast_paths.py) is handed during
one turn of the event loop and runs them as one transaction:

1. each body is parsed and validated on its own; one that fails goes back to the framework
   (which answers it with the same error as always);
2. one connection, one write transaction (SQLite's write turn is taken once, without waiting
   on the event loop: if another writer holds it, the loop tries again every millisecond while
   more creates join the group, and after 50 ms the group waits for the turn in the thread
   pool, where waiting is harmless). On PostgreSQL the group does not wait for more creates
   (the ones that arrived while the loop was busy form it) and is awaited on the loop; its
   creates are held (storage/pending_creates.py) and written, with their Provenances, by one
   statement, run on its own in autocommit mode when nothing else was sent: one round trip for
   the group instead of four per create (measured over HTTP, 8 clients: 702 creates/s alone,
   1,319/s in groups);
3. the creates run one after the other; if one fails (authorization after the write, a hook),
   the transaction is rolled back and every create of the group goes to the framework to run
   alone, exactly as if it had come alone (nothing of the group was committed). Failures are
   rare here (invalid bodies were sorted out in step 1), and a SAVEPOINT per create, to undo
   one alone, made every create a third slower;
4. one COMMIT; then each answer is made. If the COMMIT fails nothing was stored, and every
   create of the group goes to the framework to be tried on its own (on PostgreSQL, when the
   group's statement ran on its own, the rows were committed by it: the group is answered as
   stored, never run twice).

Nothing about a single create changes: the same validation, authorization, Provenance,
hooks and answer, in the same order, and a create is acknowledged only once its transaction
is committed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from careplan_fhir.fhir.outcome import issue
from careplan_fhir.storage.audit_log import AUDIT_TYPE
from careplan_fhir.storage.db import WriterBusy, begin_write
from careplan_fhir.storage.pending_creates import PendingCreates, PrimaryKeys, hold_creates

from .context import FhirContext, Services, check_resource, parse_document
from .create import create_resource
from .errors import outcome_response
from .loop_database import LoopDatabase
from .write_result import WriteResult, write_response

logger = logging.getLogger(__name__)

#: At most this many creates per transaction (a larger group waits for the next turn).
MAX_GROUP = 64
#: How long the first create of a group waits for others to arrive.
GATHER_SECONDS = 0.001
#: When another writer holds the turn: try again after this long, for at most so long, on the
#: event loop; then wait for the turn in a worker thread.
RETRY_SECONDS = 0.001
BUSY_PATIENCE_SECONDS = 0.05


@dataclass
class _Pending:
    request: Request
    resource_type: str
    body: bytes
    future: asyncio.Future[Response | None]
    context: FhirContext | None = None
    document: dict[str, Any] | None = None
    result: WriteResult | None = None
    #: When this create first found the write turn taken (loop time), if it did.
    busy_since: float | None = None


class GroupCommit:
    """Creates handed over in the same turn of the event loop, committed together."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.inline = services.engine.dialect.name == "sqlite"
        self.postgres = services.engine.dialect.name == "postgresql"
        self.max_group = MAX_GROUP
        # PostgreSQL: no wait for more creates. Whatever arrived while the loop was busy forms
        # the group, and the next group forms while this one waits for its one round trip.
        self.gather = GATHER_SECONDS if self.inline else 0.0
        #: PostgreSQL: keys for the creates held in a group (storage/pending_creates.py).
        self.keys = PrimaryKeys() if self.postgres else None
        self._pending: list[_Pending] = []
        self._scheduled = False
        #: Groups committed and creates in them, tries that found the turn taken, groups
        #: handed to a worker thread and groups awaited on the loop on PostgreSQL (for tests
        #: and benchmarks).
        self.groups = 0
        self.grouped = 0
        self.busy = 0
        self.in_thread = 0
        self.on_loop = 0

    async def create(self, request: Request, resource_type: str, body: bytes) -> Response | None:
        """The create's answer, or None when the framework must answer it (nothing written)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response | None] = loop.create_future()
        self._pending.append(_Pending(request, resource_type, body, future))
        if not self._scheduled:
            self._scheduled = True
            # After the tasks already runnable in this turn: their creates join this group.
            loop.call_later(self.gather, self._start)
        return await future

    def _start(self) -> None:
        self._scheduled = False
        while self._pending:
            group = self._pending[: self.max_group]
            self._pending = self._pending[self.max_group :]
            if not self._start_group(group):
                # The write turn is taken: these go first next time, with the creates that
                # arrive meanwhile.
                self._pending = group + self._pending
                self._scheduled = True
                asyncio.get_running_loop().call_later(RETRY_SECONDS, self._start)
                return

    def _start_group(self, group: list[_Pending]) -> bool:
        """Run ``group`` (on the loop, or handed to a thread); False to try again shortly."""
        if self.inline:
            try:
                self._run(group, wait=False)
                return True
            except WriterBusy:
                # Another writer (a worker thread, the audit writer process) holds the turn,
                # most often for a few milliseconds: try again on the loop, where creates keep
                # joining the group, rather than wait in a thread, where every group after this
                # one would find the turn taken too and follow. After a while, wait there.
                self.busy += 1
                loop = asyncio.get_running_loop()
                first = group[0]
                if first.busy_since is None:
                    first.busy_since = loop.time()
                if loop.time() - first.busy_since < BUSY_PATIENCE_SECONDS:
                    return False
        database = self.services.loop_database_here()
        if database is not None:
            self.on_loop += 1
            asyncio.ensure_future(self._run_on_loop(database, group))
            return True
        self.in_thread += 1
        asyncio.ensure_future(self._run_in_thread(group))
        return True

    async def _run_on_loop(self, database: LoopDatabase, group: list[_Pending]) -> None:
        """PostgreSQL: the group on a connection of the loop database (rest/loop_database.py),
        its statements awaited on the loop."""
        try:
            await database.run(self._run_on, group, True)
        except Exception:  # noqa: BLE001 - nothing committed: the framework runs each create
            logger.warning("creates on the event loop failed", exc_info=True)
        finally:
            for pending in group:
                if not pending.future.done():
                    pending.future.set_result(None)

    async def _run_in_thread(self, group: list[_Pending]) -> None:
        try:
            await to_thread.run_sync(self._run, group, True)
        except BaseException:
            for pending in group:
                if not pending.future.done():
                    pending.future.set_result(None)
            raise

    def _run(self, group: list[_Pending], wait: bool) -> None:
        """Run ``group`` in one transaction and settle every future (raises only WriterBusy).

        No savepoint per create (they made every create a third slower): the creates of a
        group run one after the other, and if one fails, the transaction is rolled back and
        every create of the group goes to the framework to run alone, as if the group had
        never been (nothing of it was committed).
        """
        connection = self.services.engine.connect()
        try:
            self._run_on(connection, group, wait)
        finally:
            connection.close()

    def _run_on(self, connection: Connection, group: list[_Pending], wait: bool) -> None:
        """:meth:`_run` on ``connection``, which the caller closes."""
        held = None
        if self.keys is not None:
            held = PendingCreates(self.keys)
            hold_creates(connection, held)
        try:
            begin_write(connection, wait=wait)
            connection.begin()  # WriterBusy here, before anything ran, when wait is False
            ready = [p for p in group if self._prepare(p, connection, held)]
            done = all(self._create_one(p) for p in ready)
            if done:
                done = self._commit(connection, held, len(ready))
            if done:
                self.groups += 1
                self.grouped += len(ready)
                for pending in ready:
                    assert pending.context is not None
                    pending.context.committed_once = True
                    self._settle(pending, self._answer(pending))
            else:
                connection.rollback()
        except WriterBusy:
            raise
        except BaseException:
            for pending in group:
                self._settle(pending, None)
            raise
        for pending in group:
            self._settle(pending, None)  # the ones not answered: the framework answers them

    @staticmethod
    def _commit(connection: Connection, held: PendingCreates | None, count: int) -> bool:
        """Commit the group; False when nothing of it was stored.

        On PostgreSQL the held rows go first, by one statement; when that statement ran on its
        own (autocommit), it stored them, and the COMMIT after it has nothing left to do: if
        that fails all the same, the group is stored and must not be run again.
        """
        stored = False
        try:
            if held is not None:
                stored = held.flush(connection, last=True)
            connection.commit()
        except Exception:  # noqa: BLE001 - unless stored, each create goes alone
            if stored:
                logger.warning("COMMIT after the group's own statement failed", exc_info=True)
                return True
            logger.warning("group commit of %d creates failed", count, exc_info=True)
            return False
        return True

    def _prepare(self, pending: _Pending, connection: Any, held: PendingCreates | None) -> bool:
        """Parse and validate; an invalid body is the framework's to answer, and so is an
        AuditEvent when the trail has a database of its own (whose transaction the group's
        commit would not cover)."""
        if pending.resource_type == AUDIT_TYPE and self.services.audit_engine is not None:
            return False
        context = FhirContext(pending.request, self.services)
        context._connection = connection  # the group's: shared, closed once by the group
        context.pending_creates = held
        pending.context = context
        try:
            pending.document = check_resource(
                parse_document(pending.body, context.header("content-type")),
                pending.resource_type,
            )
        except Exception:  # noqa: BLE001 - the framework path reports it properly
            return False
        return True

    def _create_one(self, pending: _Pending) -> bool:
        """The create, in the group's transaction; False when it failed."""
        assert pending.context is not None and pending.document is not None
        try:
            pending.result = create_resource(pending.context, pending.document)
        except Exception:  # noqa: BLE001 - the group is rolled back; each runs again alone
            pending.result = None
            return False
        return True

    def _answer(self, pending: _Pending) -> Response:
        assert pending.context is not None and pending.result is not None
        try:
            return write_response(pending.context, pending.result)
        except Exception:
            # Stored, but the answer could not be made: running it again would store it twice.
            logger.exception("create committed, response failed")
            return outcome_response(
                pending.request,
                500,
                [
                    issue(
                        "The resource was stored but the response failed; read it back by search",
                        code="exception",
                    )
                ],
            )

    @staticmethod
    def _settle(pending: _Pending, response: Response | None) -> None:
        future = pending.future
        if future.done():
            return
        loop = future.get_loop()
        if loop.is_running() and _on_other_thread(loop):
            loop.call_soon_threadsafe(_set_result, future, response)
        else:
            future.set_result(response)


def _set_result(future: asyncio.Future[Response | None], response: Response | None) -> None:
    if not future.done():
        future.set_result(response)


def _on_other_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is not loop
    except RuntimeError:
        return True
