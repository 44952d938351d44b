"""The audit writer in a process of its own: the server's requests never wait for its Python.

Storing an AuditEvent takes about 50 µs of Python (building the event, stamping it, extracting
its search values, handing rows to the driver). In the server's process that time competed with
the event loop for the GIL: with a writer thread beside it, the loop lost the GIL to the writer
and waited up to a switch interval to win it back, and reads served a third of what they served
without an audit trail. Here the writer (an :class:`~careplan_fhir.audit.sink.AuditSink`: the
same event building, batching and retries) runs in a child process, on the machine's other core:

* a request's :class:`~careplan_fhir.audit.events.AuditFacts` become one line of JSON in a
  buffer, written to the child's standard input (a pipe) a couple of milliseconds later, by
  the event loop itself and without blocking: what the pipe cannot take yet stays buffered;
* the child, one thread, reads what the pipe holds and stores a batch (``AuditSink.store``)
  when 500 events have come, 200 ms after the first of them, or when asked to
  hurry (a line ``h``, sent by :meth:`flush`). It reports each batch on its standard output
  (``s <stored> <lost>``) and every unreadable line (``x <count>``); a thread of the server
  reads those lines, so :attr:`pending`, :meth:`admit` (back-pressure: a request waits before
  it runs while ``capacity`` events are pending) and :meth:`flush` work as with the thread;
* the child runs at a lower priority (``nice`` 10): on busy cores requests go first;
* the child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): it stops
  when its standard input ends, that is when the server closes the pipe in :meth:`stop` or
  exits, and stores everything it was sent before it exits;
* if the child dies, the server reads back what the pipe still holds (it keeps the pipe's read
  end open for that) and sends it to a new child; the events the dead child had taken and not
  stored (the lines written to it, less those it reported and those still in the pipe) are
  counted in :attr:`lost` and logged as an error. A line it had half read reaches the new child
  torn, which drops it as unreadable.

On SQLite the child writes to the same database file as the server: the two processes take the
write turn through the lock file ``<database>-writer`` (storage/db.py), and a create on the
event loop that finds the child writing tries again shortly, then waits in a worker thread
(rest/group_commit.py).
An in-memory database cannot be shared with another process: the app uses the thread there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

import anyio
import orjson

from careplan_fhir.fhir import jsonio

from .events import AuditFacts
from .sink import Progress

logger = logging.getLogger(__name__)

#: How long a submitted event may wait in the server's buffer before it is written to the pipe.
SEND_DELAY = 0.002
#: The pipe's size asked of Linux (F_SETPIPE_SZ; the default is 64 KiB).
PIPE_SIZE = 1 << 20
_HURRY = b"h\n"
#: Events per transaction in the writer process, on either backend.
BATCH_SIZE = 500
#: How much nicer than the server the writer process is (os.nice).
NICENESS = 10


class ProcessAuditSink:
    """An audit writer process fed through a pipe (the :class:`AuditWriter` protocol)."""

    def __init__(
        self,
        database_url: str,
        *,
        capacity: int = 20_000,
        start_timeout: float = 60.0,
        checkpoints: bool = False,
    ) -> None:
        """``checkpoints``: the child checkpoints its SQLite database's write-ahead log itself
        (a database of the trail's own; the server checkpoints its main database)."""
        self.database_url = database_url
        self.checkpoints = checkpoints
        self.capacity = capacity
        self.start_timeout = start_timeout
        # Its lock also guards the buffer and the send flag.
        self._progress = Progress()
        self._lock = self._progress.lock
        #: Events stored so far, events lost (a child died holding them, or gave them up) and
        #: writer processes started again after one died.
        self.written = 0
        self.lost = 0
        self.restarts = 0
        # What the pipe has not taken yet (lines, then the tail of a partly written chunk).
        self._buffer: list[bytes] = []
        self._unsent = b""
        self._send_lock = threading.Lock()
        self._send_scheduled = False
        self._read_fd: int | None = None
        self._write_fd: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        # Per child: event lines written to its pipe, and events it accounted for (stored,
        # lost, unreadable). If it dies, what the pipe still holds is the difference's alibi.
        self._child_written = 0
        self._child_settled = 0

    # -- request side ----------------------------------------------------------------------

    async def admit(self) -> None:
        """Wait, before a request runs, while ``capacity`` events are waiting to be stored."""
        while self.pending >= self.capacity and self._process is not None:
            self._send(block=False)
            await anyio.sleep(0.002)

    def submit(self, event: dict[str, Any]) -> None:
        """Queue a whole AuditEvent (tests, benchmarks); never blocks on the event loop."""
        self._enqueue(jsonio.dumps(event) + b"\n")

    def submit_facts(self, facts: AuditFacts) -> None:
        """Queue the facts of a request's AuditEvent; never blocks on the event loop."""
        self._enqueue(orjson.dumps(tuple(facts)) + b"\n")

    def wait_for_room(self, timeout: float = 60.0) -> None:
        """:meth:`admit` for producers in threads (benchmarks, tests)."""
        deadline = time.monotonic() + timeout
        while self.pending >= self.capacity and time.monotonic() < deadline:
            self._send(block=True)
            time.sleep(0.001)

    @property
    def pending(self) -> int:
        """Events submitted and not yet stored."""
        return self._progress.pending

    def _enqueue(self, line: bytes) -> None:
        with self._lock:
            self._progress.submitted += 1
            self._buffer.append(line)
            if self._send_scheduled:
                return
            self._send_scheduled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send(block=True)  # a thread: it may wait for the pipe
            return
        loop.call_later(SEND_DELAY, self._send_from_loop, loop)

    def _send_from_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._send(block=False):
            with self._lock:
                self._send_scheduled = True
            loop.call_later(SEND_DELAY, self._send_from_loop, loop)

    def _send(self, *, block: bool) -> bool:
        """Write what is buffered to the pipe; False when some of it is still buffered."""
        if not self._send_lock.acquire(blocking=block):
            return False
        try:
            with self._lock:
                self._send_scheduled = False
                lines, self._buffer = self._buffer, []
            data = self._unsent + b"".join(lines)
            self._unsent = b""
            fd = self._write_fd
            if fd is None:
                # Not started, or stopped: kept until start().
                self._unsent = data
                return not data
            while data:
                try:
                    written = os.write(fd, data)
                except BlockingIOError:
                    if not block:
                        self._unsent = data
                        return False
                    select.select([], [fd], [], 0.05)
                    continue
                except BrokenPipeError:
                    # No reader at all (cannot happen while we hold the read end): keep it.
                    self._unsent = data
                    return False
                self._child_written += _event_lines(data[:written])
                data = data[written:]
            return True
        finally:
            self._send_lock.release()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None:
            return
        self._stopping = False
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):  # Linux only; the default size works too
            fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
        os.set_blocking(write_fd, False)
        self._read_fd, self._write_fd = read_fd, write_fd
        self._spawn()
        self._send(block=True)

    def _spawn(self) -> None:
        assert self._read_fd is not None
        self._child_written = 0
        self._child_settled = 0
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "careplan_fhir.audit.process_sink",
                self.database_url,
                *(["--checkpoints"] if self.checkpoints else []),
            ],
            stdin=self._read_fd,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert process.stdout is not None
        ready = _read_line(process.stdout, self.start_timeout)
        if ready != b"ready":
            process.kill()
            process.wait()
            process.stdout.close()
            raise RuntimeError(
                f"the audit writer process did not start (exit code {process.returncode});"
                " its error is in the log above"
            )
        self._process = process
        self._reader = threading.Thread(
            target=self._read_reports, args=(process,), name="audit-writer-reports", daemon=True
        )
        self._reader.start()
        logger.info("audit writer process %d started", process.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """Send what is buffered, close the pipe, and wait for the child to store it all."""
        process = self._process
        if process is None:
            return
        self._send(block=True)
        self._stopping = True
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.error("audit writer process did not finish within %.0f s", timeout)
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(10)
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        self._process = None
        if self.pending:
            logger.error("audit writer: %d events were not stored", self.pending)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event submitted before this call is stored."""
        with self._lock:
            target = self._progress.submitted
            if self._process is not None:
                self._buffer.append(_HURRY)  # in line with the events: none is cut in two
        self._send(block=True)
        self._progress.wait(target, timeout, "audit writer")

    # -- reports from the child ------------------------------------------------------------

    def _read_reports(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                self._report(line.split())
        process.wait()
        if self._stopping:
            return
        with self._send_lock:
            # What the dead child had not read goes to the next one; the rest it had taken.
            unread = self._take_back_unread()
            with self._lock:
                lost = self._child_written - self._child_settled - _event_lines(unread)
                self.lost += lost
                self._progress.settle(lost)
                self._unsent = unread + self._unsent
        logger.error(
            "audit writer process %d ended (exit code %s) with %d events taken and not stored;"
            " starting another",
            process.pid,
            process.returncode,
            lost,
        )
        self.restarts += 1
        try:
            self._spawn()
        except Exception:  # noqa: BLE001 - logged; what comes waits in the pipe and the buffer
            logger.exception("audit writer process could not be started again")
            self._process = None

    def _report(self, words: list[bytes]) -> None:
        if not words:
            return
        with self._lock:
            if words[0] == b"s":
                stored, lost = int(words[1]), int(words[2])
                self._child_settled += stored + lost
                self.written += stored
                self.lost += lost
                self._progress.settle(stored + lost)
            elif words[0] == b"x":
                unreadable = int(words[1])
                self._child_settled += unreadable
                self.lost += unreadable
                self._progress.settle(unreadable)

    def _take_back_unread(self) -> bytes:
        """Read back what the pipe holds (the caller holds the send lock; the child is dead)."""
        assert self._read_fd is not None
        os.set_blocking(self._read_fd, False)
        chunks = []
        try:
            while True:
                try:
                    chunk = os.read(self._read_fd, PIPE_SIZE)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.set_blocking(self._read_fd, True)
        return b"".join(chunks)

    @property
    def pid(self) -> int | None:
        """The writer process's id, while it runs."""
        return None if self._process is None else self._process.pid


def _event_lines(data: bytes) -> int:
    """How many event lines ``data`` ends.

    An event line is one JSON value and holds no raw newline before its last byte, ``]`` or
    ``}``: every ``h\\n`` is a hurry line, and a leading newline (in what the pipe held when a
    writer died) ends the torn tail of one.
    """
    return data.count(b"\n") - data.count(_HURRY) - data.startswith(b"\n")


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return b""
    return stream.readline().strip()


# -- the child -----------------------------------------------------------------------------


class _Reports:
    """The child's side of the report lines."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def say(self, line: str) -> None:
        try:
            self.stream.write(line.encode("ascii") + b"\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # the server is gone; keep storing what was sent


def run_writer(
    database_url: str,
    stdin_fd: int = 0,
    reports: IO[bytes] | None = None,
    *,
    checkpoints: bool = False,
) -> int:
    """The child: read lines from ``stdin_fd`` until it ends, store them as AuditEvents.

    One thread: it reads what the pipe holds, and stores a batch when ``batch_size`` events
    have come, ``interval`` has passed since the first of them, or the server asked to hurry
    (``flush``). While it stores, the pipe (and the server's buffer) hold what comes.
    """
    from careplan_fhir.fhir.dates import utc_now
    from careplan_fhir.storage.db import make_engine

    from .sink import AuditSink

    out = _Reports(reports if reports is not None else sys.stdout.buffer)
    # The server's checkpointer thread checkpoints the main database's WAL, as it does for
    # its own writes; a database of the trail's own is checkpointed here, by SQLite itself
    # after a commit that left enough pages in the WAL.
    engine = make_engine(database_url, background_checkpoints=not checkpoints)
    sink = AuditSink(
        engine,
        now=utc_now,
        # Larger batches than the thread's: here a batch costs the requests no GIL, and fewer,
        # larger commits write fewer pages (measured over HTTP: reads +10% against 200).
        batch_size=BATCH_SIZE,
        on_stored=lambda stored, lost: out.say(f"s {stored} {lost}"),
    )
    out.say("ready")
    batch: list[Any] = []
    deadline = 0.0
    tail = b""
    ended = hurry = False
    os.set_blocking(stdin_fd, True)
    while not ended:
        wait = None if not batch else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([stdin_fd], [], [], wait)
        if readable:
            chunk = os.read(stdin_fd, PIPE_SIZE)
            ended = not chunk
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            if not batch:
                deadline = time.monotonic() + sink.interval
            unreadable = 0
            for line in lines:
                if line == b"h":
                    hurry = True
                    continue
                if not line:
                    continue
                item = _item(line)
                if item is None:
                    unreadable += 1
                else:
                    batch.append(item)
            if unreadable:
                logger.error("audit writer: %d unreadable lines dropped", unreadable)
                out.say(f"x {unreadable}")
        while batch and (
            ended or hurry or len(batch) >= sink.batch_size or time.monotonic() >= deadline
        ):
            sink.store(batch[: sink.batch_size], final=ended)
            batch = batch[sink.batch_size :]
            deadline = time.monotonic() + sink.interval
        hurry = False
    if tail:
        logger.error("audit writer: an unfinished line at the end of its input dropped")
        out.say("x 1")
    engine.dispose()
    return 0


def _item(line: bytes) -> AuditFacts | dict[str, Any] | None:
    """An event's facts (a JSON array) or a whole event (an object); None when unreadable."""
    try:
        if line.startswith(b"["):
            return AuditFacts(*orjson.loads(line))
        event = jsonio.loads(line)
    except Exception:  # noqa: BLE001 - a torn line after a restart; counted, not kept
        return None
    return event if isinstance(event, dict) else None


def main() -> None:
    # A Ctrl-C or a SIGTERM sent to the server's process group must not cut the child short:
    # it ends when the server closes the pipe (or exits), after storing what it was sent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Requests first: when the cores are busy, the writer waits and stores larger batches
    # (back-pressure bounds how far it may fall behind). Measured over HTTP with 8 clients
    # reading: 6,414-7,168 reads/s against 5,155-6,185 at the server's own priority; creates
    # and searches the same within noise.
    os.nice(NICENESS)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s audit-writer: %(message)s")
    arguments = sys.argv[1:]
    checkpoints = "--checkpoints" in arguments
    urls = [argument for argument in arguments if argument != "--checkpoints"]
    if len(urls) != 1:
        sys.stderr.write(
            "usage: python -m careplan_fhir.audit.process_sink DATABASE_URL [--checkpoints]\n"
        )
        raise SystemExit(2)
    raise SystemExit(run_writer(urls[0], checkpoints=checkpoints))


if __name__ == "__main__":
    main()
