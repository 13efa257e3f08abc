"""Copying the files of a backup to a target location: verified, crash-safe and resumable.

Each file is read once from the source; the same buffers are hashed (SHA-256) and written to
``.<name>.partial`` beside its final name. At every checkpoint the partial file is fsynced and
the caller's :class:`Journal` learns how many bytes are durable. At the end the size and
checksum must match the task (the values the ``.vbm`` records); only then is the partial file
fsynced, renamed to its final name (never replacing anything) and the folder fsynced, and the
journal told the file is done. Corrupt data is never committed under a final name.

A crash at any moment leaves at worst a partial file whose first ``durable`` bytes (the last
value the journal recorded) are on disk: the next attempt, given that value in
:attr:`FileTask.durable`, re-hashes those bytes from the target and copies only the rest.

The caller owns the order of a backup's files. ``copy_files`` starts files in the order
given, up to ``workers`` at a time, and each file commits independently; the ``.vbm`` must be
copied by a separate call made only once every restore point file of that backup succeeded, so
that a ``.vbm`` at the target always describes complete files.

Parallelism: ``workers`` files (two by default, one per core) are transferred at once, each
by one thread that reads a chunk, hashes it and writes it (hashlib and the system calls release
the GIL, so two transfers use two cores). A helper thread per file runs the checkpoint fsyncs,
so a transfer never waits for the disk, and a file's commit (final fsync, rename, folder fsync)
runs outside the ``workers`` limit, so the next file starts meanwhile. Measured on 2 cores,
copying 2 x 400 MiB + 40 x 8 MiB (medians of 5): to tmpfs, 1.04 s with two transferring
threads, 1.06 s with two plus a separate hashing thread each, 1.21 s with one plus a hashing
thread, 1.73 s with one; to ext4, two transfers took 3.09 s against 3.66 s for one, and
committing outside the limit took the forty 8 MiB files from 1.30 s to 1.09 s. A hashing
thread added queues and buffers for no gain, so there is none. ``bench/copy_bench.py``
compares the whole against cp, rsync and rclone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cmdlets.backup.chain import partial_file_name
from cmdlets.backup.location import Location, LocationError, TargetFile, split_rel

# Big enough that system calls cost nothing, small enough to stay in the CPU cache between
# hashing and writing.
CHUNK = 1 << 20
CHECKPOINT_BYTES = 64 * 2**20
STOPPED = "stopped by request"

_TARGET_PROBLEMS = {
    errno.ENOSPC: "no space left on the target",
    errno.EDQUOT: "disk quota exceeded on the target",
    errno.EIO: "I/O error on the target",
    errno.EACCES: "permission denied on the target",
    errno.EPERM: "permission denied on the target",
    errno.EROFS: "the target is read-only",
}


@dataclass
class FileTask:
    """One file to copy.

    ``source`` is the file in the source backup, ``rel`` its path in the target location,
    ``size`` and ``sha256`` what the ``.vbm`` records (``sha256`` None for the ``.vbm``
    itself: it is then copied and its checksum reported). ``durable`` is the number of bytes
    of the partial file an earlier attempt made durable (from :meth:`Journal.progress`).
    """

    source: Path
    rel: str
    size: int
    sha256: str | None
    durable: int = 0


@dataclass
class FileOutcome:
    """What became of a task: ``sha256`` is the checksum of what was copied (also set on a
    checksum mismatch), ``bytes_written`` counts the bytes written by this attempt only."""

    task: FileTask
    ok: bool
    sha256: str | None
    bytes_written: int
    error: str | None


class Journal(Protocol):
    """Where the caller records progress (the session record).

    Calls are serialized (never two at once, also with ``on_bytes`` and ``should_stop``), but
    may come from any of the engine's threads. An exception raised here stops the whole copy
    and is re-raised by :func:`copy_files`.
    """

    def progress(self, task: FileTask, durable: int) -> None:
        """``durable`` bytes of the task's partial file are now on disk (after an fsync).

        Pass the last value back as :attr:`FileTask.durable` on a retry. It reaches the
        file's size just before the rename, which is how a retry recognises a file that an
        attempt killed between the rename and :meth:`done` left complete under its final
        name.
        """

    def done(self, task: FileTask, sha256: str) -> None:
        """The file is complete under its final name, and that name is durable."""


def partial_name(rel: str) -> str:
    """The temporary name a file is written under: ``<folder>/.<name>.partial``.

    It is the same on every attempt, so a retry finds what an interrupted one left.
    """
    parts = split_rel(rel)
    return "/".join([*parts[:-1], partial_file_name(parts[-1])])


def copy_files(
    tasks: Sequence[FileTask],
    target: Location,
    journal: Journal,
    *,
    on_bytes: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    workers: int = 2,
    checkpoint_bytes: int = CHECKPOINT_BYTES,
) -> list[FileOutcome]:
    """Copy every task's file to ``target``; the outcomes come back in task order.

    A file that cannot be copied fails alone, with a one-line ``error`` naming it: a source
    that is missing, unreadable or of another size; a checksum mismatch (its partial file is
    removed); a target error such as ENOSPC (its partial file stays, for a retry to resume);
    a final name that already exists (never overwritten). ``on_bytes(n, rel)`` reports bytes
    written by this call, for a progress bar. ``should_stop()`` is polled between chunks
    (about once per MiB: keep it cheap): when it returns True, what each running file has
    written is made durable and reported, files already verified are still committed, and
    every other file fails with the error ``"stopped by request"``.

    The parent folders of every ``rel`` must exist; the caller creates them (and records them
    for Undo). See the module docstring for the order of a backup's files.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if checkpoint_bytes < 1:
        raise ValueError(f"checkpoint_bytes must be at least 1, not {checkpoint_bytes}")
    copier = _Copier(target, journal, on_bytes, should_stop, checkpoint_bytes, workers)
    if len(tasks) <= 1:
        return [copier.copy(task) for task in tasks]
    from concurrent.futures import ThreadPoolExecutor  # 20 ms of imports (logging among them)

    # Twice as many threads as files being transferred: a file waiting for its final fsync,
    # rename and folder fsync lets the next one start (see _Copier.copy).
    threads = min(2 * workers, len(tasks))
    with ThreadPoolExecutor(threads, thread_name_prefix="bcs-copy") as pool:
        futures = [pool.submit(copier.copy, task) for task in tasks]
        try:
            return [future.result() for future in futures]
        except BaseException:
            # A journal failure or Ctrl-C: the running files stop at their next chunk, after
            # making durable what they wrote, before the pool's exit waits for them.
            copier.abort()
            for future in futures:
                future.cancel()
            raise


class _FileFailed(Exception):
    """This file cannot be copied; ``keep_partial`` False when its partial file is garbage."""

    def __init__(self, message: str, *, keep_partial: bool = True, sha256: str | None = None):
        super().__init__(message)
        self.message = message
        self.keep_partial = keep_partial
        self.sha256 = sha256


class _Copier:
    def __init__(
        self,
        target: Location,
        journal: Journal,
        on_bytes: Callable[[int, str], None] | None,
        should_stop: Callable[[], bool] | None,
        checkpoint_bytes: int,
        workers: int,
    ) -> None:
        self._target = target
        self._journal = journal
        self._on_bytes = on_bytes
        self._should_stop = should_stop
        self._checkpoint = checkpoint_bytes
        self._callbacks = threading.Lock()
        self._aborted = threading.Event()
        self._transfers = threading.BoundedSemaphore(workers)

    def abort(self) -> None:
        self._aborted.set()

    def copy(self, task: FileTask) -> FileOutcome:
        """Copy one file. Only ``workers`` files at a time read, hash and write (the work
        that needs a core and a buffer); committing (the final fsync, the rename and the
        folder fsync: waiting for the disk) happens outside that limit. On small files that
        wait is most of the time: overlapping it was measured to matter."""
        written = [0]
        try:
            with self._transfers:
                ready = self._transfer(task, written)
            sha256 = ready if isinstance(ready, str) else self._commit(task, ready)
        except _FileFailed as failure:
            if not failure.keep_partial:
                with contextlib.suppress(OSError, LocationError):
                    self._target.remove_file(partial_name(task.rel))
            return FileOutcome(task, False, failure.sha256, written[0], failure.message)
        return FileOutcome(task, True, sha256, written[0], None)

    # Callbacks, serialized so that callers need no locking of their own.

    def _stopping(self) -> bool:
        if self._aborted.is_set():
            return True
        if self._should_stop is None:
            return False
        with self._callbacks:
            return self._should_stop()

    def _progress(self, task: FileTask, durable: int) -> None:
        with self._callbacks:
            self._journal.progress(task, durable)

    def _done(self, task: FileTask, sha256: str) -> None:
        with self._callbacks:
            self._journal.done(task, sha256)

    def _bytes(self, count: int, rel: str) -> None:
        if self._on_bytes is not None:
            with self._callbacks:
                self._on_bytes(count, rel)

    # One file.

    def _transfer(self, task: FileTask, written: list[int]) -> _Transferred | str:
        """Copy the data into the partial file and verify it; or, if the file is already
        complete under its final name (see _adopt), its checksum."""
        if self._stopping():
            raise _FileFailed(STOPPED)
        with self._on_target(task):
            partial = partial_name(task.rel)
            adopted = self._adopt(task, partial) if self._target.exists(task.rel) else None
        if adopted is not None:
            self._done(task, adopted)
            return adopted
        source, mode = self._open_source(task)
        try:
            return self._copy_data(task, source, mode, partial, written)
        finally:
            os.close(source)

    def _open_source(self, task: FileTask) -> tuple[int, int]:
        """A descriptor of the source file and its permission bits, after checking its size."""
        name = _name(task)
        try:
            fd = os.open(task.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise _FileFailed(f"{name}: the source file {task.source} is missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _FileFailed(
                    f"{name}: the source {task.source} is a symbolic link, not a backup file"
                ) from None
            raise self._source_failed(task, exc) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _FileFailed(f"{name}: the source {task.source} is not a regular file")
            if st.st_size != task.size:
                raise _FileFailed(_size_mismatch(task, st.st_size))
            os.set_blocking(fd, True)
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            os.close(fd)
            raise
        # The copy gets the source's permission bits: restore points are private (0600), the
        # .vbm readable (0644), and a copy must not be more readable than its original.
        return fd, stat.S_IMODE(st.st_mode)

    def _copy_data(
        self, task: FileTask, source: int, mode: int, partial: str, written: list[int]
    ) -> _Transferred:
        buffer = memoryview(bytearray(CHUNK))
        position, digest = self._resume_point(task, partial)
        with self._on_target(task):
            out = self._target.open_write(partial, position, mode)
        syncer = _Syncer(
            out,
            lambda durable: self._progress(task, durable),
            lambda exc: self._target_failed(task, exc),
            position,
        )
        try:
            try:
                os.lseek(source, position, os.SEEK_SET)
            except OSError as exc:
                raise self._source_failed(task, exc) from None
            since_checkpoint = 0
            while position < task.size:
                if self._stopping():
                    syncer.finish(position)
                    raise _FileFailed(STOPPED)
                chunk = buffer[: min(CHUNK, task.size - position)]
                try:
                    count = os.readv(source, [chunk])
                except OSError as exc:
                    # Keep what is already written for a retry, as on a stop.
                    with contextlib.suppress(_FileFailed):
                        syncer.finish(position)
                    raise self._source_failed(task, exc) from None
                if count == 0:
                    raise _FileFailed(_size_mismatch(task, position), keep_partial=False)
                data = chunk[:count]
                digest.update(data)
                try:
                    out.write(data)
                except OSError as exc:
                    raise self._target_failed(task, exc) from None
                position += count
                written[0] += count
                self._bytes(count, task.rel)
                since_checkpoint += count
                if since_checkpoint >= self._checkpoint:
                    syncer.request(position)
                    since_checkpoint = 0
            self._check_source_end(task, source, buffer)
            actual = digest.hexdigest()
            if task.sha256 is not None and actual != task.sha256.lower():
                raise _FileFailed(
                    f"{_name(task)}: checksum mismatch: the copied data hashes to {actual}, the "
                    f"metadata records {task.sha256} (is the source damaged?)",
                    keep_partial=False,
                    sha256=actual,
                )
        except BaseException:
            _abandon(syncer, out)
            raise
        return _Transferred(partial, out, syncer, position, actual)

    def _commit(self, task: FileTask, data: _Transferred) -> str:
        """Make the verified partial file durable, give it its final name, tell the journal."""
        try:
            data.syncer.finish(data.position)
        except BaseException:
            _abandon(data.syncer, data.out)
            raise
        with self._on_target(task):
            data.out.close()
            try:
                self._target.rename(data.partial, task.rel)
            except FileExistsError:
                raise _FileFailed(_exists(self._target, task)) from None
            self._target.sync_dir(task.rel.rpartition("/")[0])
        self._done(task, data.sha256)
        return data.sha256

    def _resume_point(self, task: FileTask, partial: str) -> tuple[int, hashlib._Hash]:
        """Where to continue writing the partial file, with the hash of what comes before.

        The durable bytes were hashed as they were written by the earlier attempt; they are
        hashed again from the target (not the source) so that the final checksum covers what
        the file really holds.
        """
        fresh = (0, hashlib.sha256())
        if task.durable <= 0 or task.durable > task.size:
            return fresh
        with self._on_target(task):
            have = self._target.size(partial)
            if have is None or have < task.durable:
                return fresh
            with self._target.open_read(partial) as reader:
                digest = self._hash(reader, task.durable)
        if digest is None:
            return fresh  # shrunk since its size was read: start over
        return task.durable, digest

    def _hash(self, reader: BinaryIO, size: int) -> hashlib._Hash | None:
        """The hash of the first ``size`` bytes, or None if there are fewer."""
        digest = hashlib.sha256()
        left = size
        while left:
            if self._stopping():
                raise _FileFailed(STOPPED)
            data = reader.read(min(CHUNK, left))
            if not data:
                return None
            digest.update(data)
            left -= len(data)
        return digest

    def _check_source_end(self, task: FileTask, source: int, buffer: memoryview) -> None:
        try:
            extra = os.readv(source, [buffer[:1]])
        except OSError as exc:
            raise self._source_failed(task, exc) from None
        if extra:
            size = task.size
            with contextlib.suppress(OSError):
                size = os.fstat(source).st_size
            raise _FileFailed(_size_mismatch(task, max(size, task.size + 1)), keep_partial=False)

    def _adopt(self, task: FileTask, partial: str) -> str:
        """The checksum of the file already at the final name, if it is this task's.

        If the journal says this file's partial was complete and durable, and the partial is
        gone, an earlier attempt died between its rename and ``journal.done``: the file is
        ours, and is accepted once it verifies. Anything else at that name is not ours, is
        left alone, and fails the task.
        """
        refuse = _FileFailed(_exists(self._target, task))
        # For an empty file "0 bytes durable" is also what a task never started says; it is
        # adopted all the same, as an empty file holds nothing anyone could lose.
        if task.durable != task.size:
            raise refuse
        if self._target.size(partial) is not None or self._target.size(task.rel) != task.size:
            raise refuse
        with self._target.open_read(task.rel) as reader:
            digest = self._hash(reader, task.size)
        if digest is None:
            raise refuse
        actual = digest.hexdigest()
        if task.sha256 is not None and actual != task.sha256.lower():
            raise refuse
        self._target.sync_dir(task.rel.rpartition("/")[0])
        return actual

    # Errors.

    @contextlib.contextmanager
    def _on_target(self, task: FileTask) -> Iterator[None]:
        """Turn an error of the target into this file's failure (the partial stays)."""
        try:
            yield
        except OSError as exc:
            raise self._target_failed(task, exc) from None
        except LocationError as exc:
            raise _FileFailed(f"{_name(task)}: {exc.message}") from None

    def _target_failed(self, task: FileTask, exc: OSError) -> _FileFailed:
        problem = _TARGET_PROBLEMS.get(exc.errno or 0) or exc.strerror or str(exc)
        return _FileFailed(
            f"{_name(task)}: writing to {self._target.description} failed: {problem}"
        )

    def _source_failed(self, task: FileTask, exc: OSError) -> _FileFailed:
        return _FileFailed(
            f"{_name(task)}: cannot read the source file {task.source}: {exc.strerror or exc}"
        )


@dataclass
class _Transferred:
    """A partial file holding all of a file's data, verified, not yet durable or renamed."""

    partial: str
    out: TargetFile
    syncer: _Syncer
    position: int
    sha256: str


def _abandon(syncer: _Syncer, out: TargetFile) -> None:
    syncer.close()
    with contextlib.suppress(OSError):
        out.close()


class _Syncer:
    """Runs a file's checkpoint fsyncs in a helper thread, then tells the journal.

    Requests that arrive while a sync runs are merged into the next one, so a disk slower
    than the copy means fewer, larger checkpoints rather than a queue. The thread starts with
    the first checkpoint: small files never pay for it.
    """

    def __init__(
        self,
        out: TargetFile,
        report: Callable[[int], None],
        target_failed: Callable[[OSError], _FileFailed],
        durable: int,
    ) -> None:
        self._out = out
        self._report = report
        self._target_failed = target_failed
        self._condition = threading.Condition()
        self._wanted = durable
        self._durable = durable
        self._closing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def request(self, position: int) -> None:
        """Make ``position`` bytes durable soon; raises the failure of an earlier sync."""
        with self._condition:
            self._raise_error()
            self._wanted = position
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bcs-sync", daemon=True)
                self._thread.start()
            self._condition.notify()

    def finish(self, position: int) -> None:
        """Make ``position`` bytes durable now and report them; no helper runs afterwards."""
        self.close()
        self._raise_error()
        try:
            self._out.sync()
        except OSError as exc:
            raise self._target_failed(exc) from None
        if position > self._durable:
            self._report(position)
            self._durable = position

    def close(self) -> None:
        """Stop the helper thread (a sync it is running completes first)."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closing and self._wanted <= self._durable:
                    self._condition.wait()
                if self._closing:
                    return
                position = self._wanted
            try:
                self._out.sync()
            except OSError as exc:
                self._fail(self._target_failed(exc))
                return
            try:
                self._report(position)
            # Whatever the journal raises belongs to the caller: the copier re-raises it.
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc)
                return
            with self._condition:
                self._durable = position

    def _fail(self, error: BaseException) -> None:
        with self._condition:
            self._error = error
            # Nothing more is asked of a helper whose sync failed.
            self._closing = True


def _name(task: FileTask) -> str:
    return task.rel.rpartition("/")[2]


def _size_mismatch(task: FileTask, actual: int) -> str:
    how = "shorter" if actual < task.size else "longer"
    return (
        f"{_name(task)}: size mismatch: the source file {task.source} is {how} ({actual} bytes) "
        f"than the metadata records ({task.size} bytes)"
    )


def _exists(target: Location, task: FileTask) -> str:
    where = f"{target.description.rstrip('/')}/{task.rel}"
    return f"{_name(task)}: {where} already exists at the target; bcs never overwrites a file"
