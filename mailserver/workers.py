"""``[server] workers`` > 1: ``caducee serve`` as one supervisor and N worker processes, so every core works.

The supervisor (the ``caducee serve`` process) binds every listener but the admin one once, without
SO_REUSEPORT (``mailserver.handshakes.bind_shared``: a second instance on the same ports is refused
there, EADDRINUSE), runs the start-up checks once, then forks the workers while it has no event loop
and no thread, so each child starts clean and runs ``mailserver.app.run`` with its index. The workers
inherit the listening sockets and accept on them (the kernel hands each new connection to one of
them); the supervisor keeps its copies open, never accepting, to start workers again. Only worker 0
opens the admin listener, bound by itself (``/metrics`` are worker 0's counters), and runs the daily
maintenance. The workers share nothing but PostgreSQL and the store: LISTEN/NOTIFY
carries IMAP IDLE and queue wake-ups between them as between nodes, and the queue's leases keep a
message to one delivery worker. Connection and rate limits are counted in each process.

SIGTERM or SIGINT to the supervisor is forwarded to every worker, which shuts down as a single process
does (``[server] shutdown_grace``); the supervisor exits 0 once all have exited. A worker that fails
before it is ready at start-up stops the server with its exit code (the admin port taken: starting
it again would fail again). One that dies later is started again after a back-off (1 s,
doubled each time it dies again within a minute of its start, at most 30 s), logged as
``worker-exited`` with ``restart_in``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from mailserver import logs
from mailserver.logs import log_event

log = logging.getLogger("caducee.workers")

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
WATCHED = STOP_SIGNALS | {signal.SIGCHLD}
STABLE = 60.0  # a worker that ran this long before dying starts again after the shortest back-off
BACKOFF_MAX = 30.0
PR_SET_PDEATHSIG = 1

# Runs worker ``index`` until it is told to stop; calls ``ready()`` once its listeners are open. A
# refusal to start is ``SystemExit(code)`` (what ``caducee serve`` prints and exits with).
Worker = Callable[[int, Callable[[], None]], None]


class Supervisor:
    """The ``caducee serve`` process of ``[server] workers`` > 1: forks, watches and stops the workers."""

    def __init__(self, count: int, worker: Worker) -> None:
        self.count = count
        self.worker = worker
        self.running: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # worker index -> when it was last started
        self.failures: dict[int, int] = {}  # worker index -> deaths in a row, each within STABLE
        self.due: dict[int, float] = {}  # worker index -> when to start it again
        self.stopping = False

    def run(self) -> int:
        """Start the workers, restart those that die, stop them all on SIGTERM/SIGINT; the exit code."""
        # Signals wait in the kernel until ``sigtimedwait`` takes them: none is lost between two forks.
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        readiness = {self.spawn(index, report=True): index for index in range(self.count)}
        failed = self.wait_ready(readiness)
        if failed is not None:
            return self.abort(failed)
        while self.running or (self.due and not self.stopping):
            if self.due:
                timeout = max(min(self.due.values()) - time.monotonic(), 0.0)
                info = signal.sigtimedwait(WATCHED, timeout)
            else:
                info = signal.sigwaitinfo(WATCHED)
            if info is not None and info.si_signo in STOP_SIGNALS:
                self.stop(info.si_signo)
            self.reap()
            now = time.monotonic()
            for index in [i for i, when in self.due.items() if when <= now and not self.stopping]:
                del self.due[index]
                self.spawn(index, report=False)
        log_event("workers-stopped", workers=self.count)
        return 0

    def spawn(self, index: int, report: bool) -> int:
        """Fork worker ``index``; with ``report``, the pipe it writes one byte to once ready (-1 else)."""
        reader, writer = os.pipe() if report else (-1, -1)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            if report:
                os.close(reader)
            _child(index, supervisor, writer, self.worker)
        if report:
            os.close(writer)
        self.running[pid] = index
        self.started[index] = time.monotonic()
        log_event("worker-started", worker=index, pid=pid)
        return reader

    def wait_ready(self, readiness: dict[int, int]) -> int | None:
        """Wait until every first worker is ready; the pid of one that exited before, if any. A stop
        signal ends the wait early: the main loop then stops the workers."""
        pids = {index: pid for pid, index in self.running.items()}
        failed = None
        while readiness and failed is None and not (signal.sigpending() & STOP_SIGNALS):
            readable, _, _ = select.select(list(readiness), [], [], 0.5)
            for fd in readable:
                index = readiness.pop(fd)
                if not os.read(fd, 1):  # end of file: it exited without calling ready()
                    failed = pids[index]
                os.close(fd)
        for fd in readiness:
            os.close(fd)
        return failed

    def abort(self, failed: int) -> int:
        """A worker could not start: stop the others, exit with its code (at least 1)."""
        _, status = os.waitpid(failed, 0)
        index = self.running.pop(failed)
        code = os.waitstatus_to_exitcode(status)
        log_event("worker-exited", logging.ERROR, worker=index, pid=failed, code=code, restart_in=None)
        self.stop(signal.SIGTERM)
        for pid in list(self.running):
            os.waitpid(pid, 0)
            del self.running[pid]
        return code if code > 0 else 1

    def stop(self, signo: int) -> None:
        """Pass the stop signal on to every worker; none is started again from now on."""
        if not self.stopping:
            log_event("stopping", signal=signal.Signals(signo).name, workers=len(self.running))
        self.stopping = True
        self.due.clear()
        for pid in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signo)

    def reap(self) -> None:
        """Collect every worker that exited; schedule its restart unless the server is stopping."""
        while self.running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            index = self.running.pop(pid)
            code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
            if self.stopping:
                log_event("worker-exited", worker=index, pid=pid, code=code, restart_in=None)
                continue
            quick = time.monotonic() - self.started[index] < STABLE
            self.failures[index] = self.failures.get(index, 0) + 1 if quick else 1
            delay = min(2.0 ** (self.failures[index] - 1), BACKOFF_MAX)
            self.due[index] = time.monotonic() + delay
            log_event("worker-exited", logging.ERROR, worker=index, pid=pid, code=code, restart_in=delay)


def _child(index: int, supervisor: int, ready_fd: int, worker: Worker) -> NoReturn:
    """A worker process: never returns into the supervisor's code (``os._exit``)."""
    code = 1
    try:
        with contextlib.suppress(OSError, AttributeError):  # Linux: stop if the supervisor is killed
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # it died before prctl
            os._exit(1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
        logs.set_worker(index, os.getpid())

        def ready() -> None:
            if ready_fd >= 0:
                os.write(ready_fd, b"r")
                os.close(ready_fd)

        worker(index, ready)
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:  # SIGINT before the worker's loop took the signal over
        code = 0
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def supervise(count: int, worker: Worker) -> int:
    """Run ``count`` worker processes until SIGTERM/SIGINT; the exit code for ``caducee serve``."""
    return Supervisor(count, worker).run()
