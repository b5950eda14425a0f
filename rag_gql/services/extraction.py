"""The worker's extraction processes: parsing of uploads, under a time and a memory limit.

Every call runs in a child process (`pebble.ProcessPool`, spawned) whose address space is
capped at `PARSE_MAX_MEMORY` (`RLIMIT_AS`), and is stopped after `PARSE_TIMEOUT` seconds. A
call that passes a limit, or whose process dies (out of memory, a crash in a parser), raises
`ExtractionLimit` naming the limit; pebble replaces the process, so the next call, of this
document or another, runs in a sound pool. With `processes=0` the calls run in one thread of
the calling process instead, without either limit (tests, small tools).

Within a call, `page_deadline` bounds one step (the OCR of a page) with a timer of the
kernel's: `SIGALRM` at its default action ends the process even inside a C library that never
returns to Python, and the call raises `ExtractionLimit` naming OCR_PAGE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import pebble

from rag_gql.errors import InvalidInput

T = TypeVar("T")


class ExtractionLimit(InvalidInput):
    """A parse passed `PARSE_TIMEOUT`, `PARSE_MAX_MEMORY` or `OCR_PAGE_TIMEOUT`, or its
    process died."""


_in_child = False


@contextmanager
def page_deadline(seconds: float) -> Iterator[None]:
    """In an extraction process, ends the process when the block lasts over `seconds`
    (the call then raises `ExtractionLimit` for OCR_PAGE_TIMEOUT); elsewhere, no limit."""
    if not _in_child:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _start_child(max_memory: int) -> None:
    """Runs first in each extraction process: loads the parsers, then caps the memory."""
    # PyMuPDF loads numpy, whose BLAS would start (and reserve address space for) a thread
    # per CPU; parsing never uses it.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    # The parsers' import is in the child's baseline, not in what a document may use.
    import rag_gql.services.parsing  # noqa: F401

    global _in_child
    _in_child = True
    # The default action of SIGALRM ends the process: `page_deadline`'s watchdog.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))


class ExtractionPool:
    """Runs parsing functions in extraction processes, one call at a time per process."""

    def __init__(self, *, processes: int, timeout: float, max_memory: int) -> None:
        """`processes` 0 means one thread of this process, without limits; `timeout` is in
        seconds per call, `max_memory` in bytes of address space per process."""
        self.processes = processes
        self._timeout = timeout
        self._max_memory = max_memory
        self._pool: pebble.ProcessPool | ThreadPoolExecutor | None = None

    @property
    def workers(self) -> int:
        """How many calls run at once."""
        return max(1, self.processes)

    def _executor(self) -> pebble.ProcessPool | ThreadPoolExecutor:
        pool = self._pool
        if isinstance(pool, pebble.ProcessPool) and not pool.active:
            pool = None  # stopped by an error of its own: start another
        if pool is None:
            if self.processes == 0:
                # One thread: MuPDF is not thread-safe, so never two extractions at once.
                pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse")
            else:
                pool = pebble.ProcessPool(
                    max_workers=self.processes,
                    initializer=_start_child,
                    initargs=(self._max_memory,),
                    # spawn: a forked child would inherit the event loop's threads and sockets.
                    context=multiprocessing.get_context("spawn"),
                )
            self._pool = pool
        return pool

    async def run(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Returns `function(*args, **kwargs)` run in an extraction process; `what` names the
        work in errors ("'a.docx', units 1-32").

        Raises:
            ExtractionLimit: the call passed a limit or its process died (the message says
                which, with the setting's name).
            InvalidInput: and whatever else `function` raises.
        """
        pool = self._executor()
        if isinstance(pool, ThreadPoolExecutor):
            call = functools.partial(function, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(pool, call)
        future = pool.schedule(function, args=args, kwargs=kwargs, timeout=self._timeout)
        try:
            return await asyncio.wrap_future(future)
        except concurrent.futures.TimeoutError:
            raise ExtractionLimit(
                f"parsing {what} took longer than the limit of {self._timeout:g} seconds "
                "(PARSE_TIMEOUT)"
            ) from None
        except MemoryError:
            raise self._memory_error(what) from None
        except pebble.ProcessExpired as exc:
            if exc.exitcode == -signal.SIGKILL:  # the kernel's OOM killer, most likely
                raise self._memory_error(what, " (the process was killed)") from None
            if exc.exitcode == -signal.SIGALRM:  # `page_deadline`'s watchdog
                raise ExtractionLimit(
                    f"OCR of a page of {what} took longer than its limit (OCR_PAGE_TIMEOUT)"
                ) from None
            raise ExtractionLimit(
                f"the process parsing {what} crashed (exit code {exc.exitcode}); "
                "the file is probably damaged"
            ) from None
        finally:
            # Cancelled (worker shutdown): pebble stops the process that runs the call.
            future.cancel()  # type: ignore[no-untyped-call]  # pebble leaves it unannotated

    def _memory_error(self, what: str, detail: str = "") -> ExtractionLimit:
        return ExtractionLimit(
            f"parsing {what} needed more than the memory limit of "
            f"{self._max_memory / 2**20:.0f} MiB (PARSE_MAX_MEMORY){detail}"
        )

    def close(self) -> None:
        """Stops the extraction processes (a running call is abandoned)."""
        pool, self._pool = self._pool, None
        if isinstance(pool, pebble.ProcessPool):
            pool.stop()  # type: ignore[no-untyped-call]  # pebble leaves it unannotated
            pool.join()
        elif pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
