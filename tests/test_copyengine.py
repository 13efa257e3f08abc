"""The copy engine and local target locations: verified, crash-safe, resumable, contained."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from cmdlets.backup.copyengine import (
    STOPPED,
    FileTask,
    copy_files,
    partial_name,
)
from cmdlets.backup.location import (
    LocalLocation,
    LocationError,
    TargetEscapeError,
    TargetFile,
    split_rel,
)

MIB = 1 << 20


class RecordingJournal:
    def __init__(self) -> None:
        self.durable: dict[str, int] = {}
        self.progress_calls: list[tuple[str, int]] = []
        self.finished: dict[str, str] = {}

    def progress(self, task: FileTask, durable: int) -> None:
        assert durable >= self.durable.get(task.rel, 0), "durable never goes back"
        self.durable[task.rel] = durable
        self.progress_calls.append((task.rel, durable))

    def done(self, task: FileTask, sha256: str) -> None:
        self.finished[task.rel] = sha256


def write_file(path: Path, size: int, mode: int = 0o600) -> str:
    """A file of random bytes; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            data = os.urandom(min(left, 4 * MIB))
            digest.update(data)
            f.write(data)
            left -= len(data)
    path.chmod(mode)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def task_for(source: Path, rel: str, durable: int = 0, sha256: str | None = "") -> FileTask:
    """A task with the source's real size and checksum (``sha256=""``) or the given one."""
    return FileTask(
        source,
        rel,
        source.stat().st_size,
        sha256_of(source) if sha256 == "" else sha256,
        durable,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / "Daily SQL"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def target_root(tmp_path: Path) -> Path:
    root = tmp_path / "copies"
    (root / "Daily SQL copy").mkdir(parents=True)
    return root


@pytest.fixture
def target(target_root: Path) -> LocalLocation:
    return LocalLocation(target_root)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.partial"))


# -- copying ----------------------------------------------------------------------------------


def test_copies_files_byte_for_byte_and_reports_everything(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    sizes = {"a.vbk": 0, "b.vib": 1, "c.vib": 3 * MIB + 17, "d.vib": 9 * MIB, "e.vib": MIB}
    tasks = []
    for name, size in sizes.items():
        write_file(source / name, size)
        tasks.append(task_for(source / name, f"Daily SQL copy/{name}"))
    journal = RecordingJournal()
    reported: dict[str, int] = {}

    def on_bytes(count: int, rel: str) -> None:
        reported[rel] = reported.get(rel, 0) + count

    threads_before = threading.active_count()
    outcomes = copy_files(tasks, target, journal, on_bytes=on_bytes, checkpoint_bytes=2 * MIB)

    assert [o.task for o in outcomes] == tasks
    assert all(o.ok and o.error is None for o in outcomes), outcomes
    for task, outcome in zip(tasks, outcomes, strict=True):
        copy = target_root / task.rel
        assert copy.read_bytes() == task.source.read_bytes()
        assert outcome.sha256 == task.sha256 == journal.finished[task.rel]
        assert outcome.bytes_written == task.size
        assert reported.get(task.rel, 0) == task.size
        assert (copy.stat().st_mode & 0o777) == 0o600  # as private as the source
    assert journal.durable["Daily SQL copy/d.vib"] == 9 * MIB
    assert leftovers(target_root) == []
    assert threading.active_count() == threads_before


def test_metadata_without_checksum_is_copied_and_its_checksum_reported(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    vbm = source / "Daily SQL.vbm"
    vbm.write_text('{"FormatVersion": 1}')
    vbm.chmod(0o644)
    journal = RecordingJournal()
    [outcome] = copy_files(
        [task_for(vbm, "Daily SQL copy/Daily SQL.vbm", sha256=None)], target, journal
    )
    assert outcome.ok
    assert outcome.sha256 == sha256_of(vbm) == journal.finished["Daily SQL copy/Daily SQL.vbm"]
    copy = target_root / "Daily SQL copy" / "Daily SQL.vbm"
    assert copy.read_bytes() == vbm.read_bytes()
    assert (copy.stat().st_mode & 0o777) == 0o644


def test_outcomes_keep_task_order_with_several_workers(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    tasks = []
    for i in range(12):
        write_file(source / f"p{i}.vib", random.randrange(0, 2 * MIB))
        tasks.append(task_for(source / f"p{i}.vib", f"Daily SQL copy/p{i}.vib"))
    outcomes = copy_files(tasks, target, RecordingJournal(), workers=3)
    assert [o.task.rel for o in outcomes] == [t.rel for t in tasks]
    assert all(o.ok for o in outcomes)


def test_partial_name_is_hidden_beside_the_final_name() -> None:
    assert partial_name("Daily SQL copy/x.vbk") == "Daily SQL copy/.x.vbk.partial"
    assert partial_name("x.vbk") == ".x.vbk.partial"
    with pytest.raises(LocationError):
        partial_name("../x.vbk")


# -- verification -----------------------------------------------------------------------------


def test_checksum_mismatch_fails_the_file_and_leaves_nothing(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    good = source / "good.vib"
    write_file(good, 2 * MIB)
    bad = source / "bad.vbk"
    write_file(bad, 3 * MIB)
    expected = sha256_of(bad)
    with bad.open("r+b") as f:  # a flipped byte after the metadata recorded the checksum
        f.seek(MIB + 5)
        byte = f.read(1)
        f.seek(MIB + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    tasks = [
        task_for(bad, "Daily SQL copy/bad.vbk", sha256=expected),
        task_for(good, "Daily SQL copy/good.vib"),
    ]
    journal = RecordingJournal()
    bad_outcome, good_outcome = copy_files(tasks, target, journal, checkpoint_bytes=MIB)
    assert not bad_outcome.ok
    assert bad_outcome.error is not None
    assert "bad.vbk" in bad_outcome.error and "checksum mismatch" in bad_outcome.error
    assert bad_outcome.sha256 == sha256_of(bad) != expected
    assert not (target_root / "Daily SQL copy" / "bad.vbk").exists()
    assert leftovers(target_root) == []
    assert "Daily SQL copy/bad.vbk" not in journal.finished
    assert good_outcome.ok  # one bad file fails alone


def test_source_of_another_size_fails_before_anything_is_written(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    path = source / "a.vbk"
    write_file(path, MIB)
    task = task_for(path, "Daily SQL copy/a.vbk")
    task.size += 10
    [outcome] = copy_files([task], target, RecordingJournal())
    assert not outcome.ok and outcome.error is not None
    assert "size mismatch" in outcome.error and "shorter" in outcome.error
    assert os.listdir(target_root / "Daily SQL copy") == []


def test_source_shrinking_during_the_copy_fails_and_removes_the_partial(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    path = source / "a.vbk"
    write_file(path, 4 * MIB)
    task = task_for(path, "Daily SQL copy/a.vbk")

    def on_bytes(count: int, rel: str) -> None:
        os.truncate(path, MIB + MIB // 2)

    [outcome] = copy_files([task], target, RecordingJournal(), on_bytes=on_bytes)
    assert not outcome.ok and outcome.error is not None
    assert "size mismatch" in outcome.error
    assert os.listdir(target_root / "Daily SQL copy") == []


def test_missing_source_fails_that_file_only(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    present = source / "b.vib"
    write_file(present, 1000)
    tasks = [
        FileTask(source / "gone.vbk", "Daily SQL copy/gone.vbk", 10, "0" * 64),
        task_for(present, "Daily SQL copy/b.vib"),
    ]
    missing, copied = copy_files(tasks, target, RecordingJournal())
    assert not missing.ok and missing.error is not None
    assert "gone.vbk" in missing.error and "missing" in missing.error
    assert copied.ok
    assert os.listdir(target_root / "Daily SQL copy") == ["b.vib"]


def test_existing_final_file_is_never_overwritten(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    path = source / "a.vbk"
    write_file(path, 1000)
    final = target_root / "Daily SQL copy" / "a.vbk"
    final.write_bytes(b"someone else's")
    [outcome] = copy_files([task_for(path, "Daily SQL copy/a.vbk")], target, RecordingJournal())
    assert not outcome.ok and outcome.error is not None
    assert "already exists" in outcome.error
    assert final.read_bytes() == b"someone else's"
    assert leftovers(target_root) == []


# -- stopping and resuming --------------------------------------------------------------------


def stop_after(limit: int) -> tuple[Callable[[int, str], None], Callable[[], bool]]:
    """(on_bytes, should_stop) that ask to stop once ``limit`` bytes were written."""
    written = [0]

    def on_bytes(count: int, rel: str) -> None:
        written[0] += count

    def should_stop() -> bool:
        return written[0] >= limit

    return on_bytes, should_stop


def test_stop_makes_the_partial_durable_and_a_retry_copies_only_the_rest(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    path = source / "full.vbk"
    size = 8 * MIB + 123
    write_file(path, size)
    checkpoint = MIB
    journal = RecordingJournal()
    on_bytes, should_stop = stop_after(3 * MIB + MIB // 2)
    [first] = copy_files(
        [task_for(path, "Daily SQL copy/full.vbk")],
        target,
        journal,
        on_bytes=on_bytes,
        should_stop=should_stop,
        checkpoint_bytes=checkpoint,
    )
    assert not first.ok and first.error == STOPPED
    durable = journal.durable["Daily SQL copy/full.vbk"]
    assert durable == first.bytes_written >= 3 * MIB  # all that was written is durable
    partial = target_root / "Daily SQL copy" / ".full.vbk.partial"
    assert partial.stat().st_size >= durable
    assert not (target_root / "Daily SQL copy" / "full.vbk").exists()

    [second] = copy_files(
        [task_for(path, "Daily SQL copy/full.vbk", durable=durable)],
        target,
        journal,
        checkpoint_bytes=checkpoint,
    )
    assert second.ok, second.error
    assert second.bytes_written < size - durable + checkpoint
    assert second.bytes_written == size - durable
    assert (target_root / "Daily SQL copy" / "full.vbk").read_bytes() == path.read_bytes()
    assert leftovers(target_root) == []


def test_stop_before_starting_touches_nothing(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    tasks = []
    for name in ("a.vbk", "b.vib", "c.vib"):
        write_file(source / name, MIB)
        tasks.append(task_for(source / name, f"Daily SQL copy/{name}"))
    outcomes = copy_files(tasks, target, RecordingJournal(), should_stop=lambda: True)
    assert [(o.ok, o.error, o.bytes_written) for o in outcomes] == [(False, STOPPED, 0)] * 3
    assert os.listdir(target_root / "Daily SQL copy") == []


def test_resume_drops_bytes_after_the_durable_point(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    path = source / "a.vbk"
    write_file(path, 5 * MIB)
    data = path.read_bytes()
    partial = target_root / "Daily SQL copy" / ".a.vbk.partial"
    partial.write_bytes(data[: 2 * MIB] + b"garbage written after the last fsync")
    [outcome] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=2 * MIB)], target, RecordingJournal()
    )
    assert outcome.ok and outcome.bytes_written == 3 * MIB
    assert (target_root / "Daily SQL copy" / "a.vbk").read_bytes() == data


def test_resume_hashes_the_durable_part_from_the_target(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    """The final checksum covers what the file holds, not what the source held."""
    path = source / "a.vbk"
    write_file(path, 4 * MIB)
    damaged = bytearray(path.read_bytes()[: 2 * MIB])
    damaged[1000] ^= 0x01
    partial = target_root / "Daily SQL copy" / ".a.vbk.partial"
    partial.write_bytes(bytes(damaged))
    [outcome] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=2 * MIB)], target, RecordingJournal()
    )
    assert not outcome.ok and outcome.error is not None and "checksum mismatch" in outcome.error
    assert leftovers(target_root) == []
    assert not (target_root / "Daily SQL copy" / "a.vbk").exists()


@pytest.mark.parametrize("partial_bytes", [None, MIB])
def test_resume_without_enough_partial_data_starts_over(
    source: Path, target_root: Path, target: LocalLocation, partial_bytes: int | None
) -> None:
    path = source / "a.vbk"
    write_file(path, 3 * MIB)
    if partial_bytes is not None:
        (target_root / "Daily SQL copy" / ".a.vbk.partial").write_bytes(
            path.read_bytes()[:partial_bytes]
        )
    [outcome] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=2 * MIB)], target, RecordingJournal()
    )
    assert outcome.ok and outcome.bytes_written == 3 * MIB
    assert (target_root / "Daily SQL copy" / "a.vbk").read_bytes() == path.read_bytes()


def test_crash_between_fsync_and_rename_is_finished_by_the_retry(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    path = source / "a.vbk"
    write_file(path, 2 * MIB)
    copy_files([task_for(path, "Daily SQL copy/a.vbk")], target, RecordingJournal())
    folder = target_root / "Daily SQL copy"
    (folder / "a.vbk").rename(folder / ".a.vbk.partial")
    journal = RecordingJournal()
    [outcome] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=2 * MIB)], target, journal
    )
    assert outcome.ok and outcome.bytes_written == 0
    assert journal.finished["Daily SQL copy/a.vbk"] == sha256_of(path)
    assert (folder / "a.vbk").read_bytes() == path.read_bytes()


def test_crash_between_rename_and_journal_is_adopted_by_the_retry(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    path = source / "a.vbk"
    write_file(path, 2 * MIB)
    copy_files([task_for(path, "Daily SQL copy/a.vbk")], target, RecordingJournal())
    journal = RecordingJournal()
    # The journal recorded the complete partial (durable == size) but not "done".
    [outcome] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=2 * MIB)], target, journal
    )
    assert outcome.ok and outcome.bytes_written == 0
    assert journal.finished["Daily SQL copy/a.vbk"] == sha256_of(path)
    # Without that record the file at the final name is not this session's.
    [refused] = copy_files([task_for(path, "Daily SQL copy/a.vbk")], target, journal)
    assert not refused.ok and refused.error is not None and "already exists" in refused.error


def test_empty_file_already_at_its_final_name_is_accepted(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    """A crash between the rename and the journal leaves an empty file no record can claim;
    an empty file holds nothing to lose, so the retry accepts it."""
    path = source / "empty.vib"
    write_file(path, 0)
    (target_root / "Daily SQL copy" / "empty.vib").write_bytes(b"")
    [outcome] = copy_files([task_for(path, "Daily SQL copy/empty.vib")], target, RecordingJournal())
    assert outcome.ok and outcome.bytes_written == 0


# -- target errors ----------------------------------------------------------------------------


class FailingFile:
    def __init__(self, inner: TargetFile, budget: list[int], code: int) -> None:
        self.inner = inner
        self.budget = budget
        self.code = code

    def write(self, data: bytes | memoryview) -> None:
        if self.budget[0] < len(data):
            raise OSError(self.code, os.strerror(self.code))
        self.budget[0] -= len(data)
        self.inner.write(data)

    def sync(self) -> None:
        self.inner.sync()

    def close(self) -> None:
        self.inner.close()


class FailingLocation(LocalLocation):
    """A local folder whose writes fail with ``code`` after ``budget`` bytes."""

    def __init__(self, root: Path, budget: int, code: int) -> None:
        super().__init__(root)
        self.budget = [budget]
        self.code = code

    def open_write(self, rel: str, offset: int, mode: int = 0o644) -> FailingFile:  # type: ignore[override]
        return FailingFile(super().open_write(rel, offset, mode), self.budget, self.code)


def test_target_io_error_fails_the_file_and_keeps_the_partial_for_a_retry(
    source: Path, target_root: Path
) -> None:
    path = source / "a.vbk"
    write_file(path, 6 * MIB)
    journal = RecordingJournal()
    failing = FailingLocation(target_root, 3 * MIB, errno.EIO)
    [failed] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk")], failing, journal, checkpoint_bytes=MIB
    )
    assert not failed.ok and failed.error is not None
    assert "a.vbk" in failed.error and "I/O error on the target" in failed.error
    assert leftovers(target_root) == ["Daily SQL copy/.a.vbk.partial"]
    durable = journal.durable.get("Daily SQL copy/a.vbk", 0)
    assert 0 < durable <= 3 * MIB

    [retried] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=durable)],
        LocalLocation(target_root),
        journal,
    )
    assert retried.ok and retried.bytes_written == 6 * MIB - durable
    assert (target_root / "Daily SQL copy" / "a.vbk").read_bytes() == path.read_bytes()


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root")
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_full_target_fails_with_no_space(source: Path, tmp_path: Path) -> None:
    path = source / "a.vbk"
    write_file(path, 3 * MIB)
    with small_tmpfs(tmp_path / "small", "2m") as root:
        (root / "copy").mkdir()
        [outcome] = copy_files(
            [task_for(path, "copy/a.vbk")], LocalLocation(root), RecordingJournal()
        )
        assert not outcome.ok and outcome.error is not None
        assert "no space" in outcome.error and "a.vbk" in outcome.error
        assert not (root / "copy" / "a.vbk").exists()
        assert (root / "copy" / ".a.vbk.partial").exists()  # kept for a retry


def test_journal_failure_stops_everything_and_propagates(
    source: Path, target_root: Path, target: LocalLocation
) -> None:
    tasks = []
    for name in ("a.vbk", "b.vib", "c.vib"):
        write_file(source / name, 4 * MIB)
        tasks.append(task_for(source / name, f"Daily SQL copy/{name}"))

    class BrokenJournal(RecordingJournal):
        def progress(self, task: FileTask, durable: int) -> None:
            raise RuntimeError("state directory is gone")

    threads_before = threading.active_count()
    with pytest.raises(RuntimeError, match="state directory is gone"):
        copy_files(tasks, target, BrokenJournal(), checkpoint_bytes=MIB)
    assert threading.active_count() == threads_before
    assert not (target_root / "Daily SQL copy" / "a.vbk").exists()


# -- containment (SPEC §10) -------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious").write_bytes(b"precious")
    return folder


def outside_is_untouched(outside: Path) -> bool:
    return sorted(os.listdir(outside)) == ["precious"] and (
        (outside / "precious").read_bytes() == b"precious"
    )


def test_symlinked_folder_inside_the_target_is_not_followed(
    source: Path, target_root: Path, target: LocalLocation, outside: Path
) -> None:
    (target_root / "evil").symlink_to(outside)
    path = source / "a.vbk"
    write_file(path, MIB)
    [outcome] = copy_files([task_for(path, "evil/a.vbk")], target, RecordingJournal())
    assert not outcome.ok and outcome.error is not None
    assert "symbolic link" in outcome.error
    assert outside_is_untouched(outside)
    for call in (
        lambda: target.make_dir("evil/sub"),
        lambda: target.open_write("evil/x", 0),
        lambda: target.exists("evil/precious"),
        lambda: target.size("evil/precious"),
        lambda: target.list_dir("evil"),
        lambda: target.sync_dir("evil"),
        lambda: target.remove_file("evil/precious"),
        lambda: target.rename("Daily SQL copy", "evil/moved"),
    ):
        with pytest.raises(TargetEscapeError):
            call()
    assert outside_is_untouched(outside)


@pytest.mark.parametrize("durable", [0, 1000])
def test_symlink_planted_as_the_partial_file_is_not_followed(
    source: Path, target_root: Path, target: LocalLocation, outside: Path, durable: int
) -> None:
    path = source / "a.vbk"
    write_file(path, 2 * MIB)
    link = target_root / "Daily SQL copy" / ".a.vbk.partial"
    link.symlink_to(outside / "precious")
    [outcome] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=durable)], target, RecordingJournal()
    )
    if durable == 0:  # a fresh start replaces the name, never writes through it
        assert outcome.ok
        assert (target_root / "Daily SQL copy" / "a.vbk").read_bytes() == path.read_bytes()
    else:  # resuming through a link is refused
        assert not outcome.ok and outcome.error is not None
        assert "symbolic link" in outcome.error
    assert outside_is_untouched(outside)
    (target_root / "Daily SQL copy" / "link").symlink_to(outside / "precious")
    with pytest.raises(TargetEscapeError):
        target.open_read("Daily SQL copy/link")
    with pytest.raises(TargetEscapeError):
        target.open_write("Daily SQL copy/link", 3)
    assert outside_is_untouched(outside)


def test_hard_link_planted_as_the_partial_file_is_not_written_through(
    source: Path, target_root: Path, target: LocalLocation, outside: Path
) -> None:
    path = source / "a.vbk"
    write_file(path, 2 * MIB)
    os.link(outside / "precious", target_root / "Daily SQL copy" / ".a.vbk.partial")
    [outcome] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=4)], target, RecordingJournal()
    )
    assert not outcome.ok and outcome.error is not None and "hard links" in outcome.error
    assert outside_is_untouched(outside)
    with pytest.raises(LocationError, match="hard links"):
        target.open_write("Daily SQL copy/.a.vbk.partial", 4)
    assert outside_is_untouched(outside)


@pytest.mark.parametrize("durable", [0, 2 * MIB])
def test_symlink_planted_as_the_final_file_is_not_followed(
    source: Path, target_root: Path, target: LocalLocation, outside: Path, durable: int
) -> None:
    path = source / "a.vbk"
    write_file(path, 2 * MIB)
    (target_root / "Daily SQL copy" / "a.vbk").symlink_to(outside / "new-file")
    [outcome] = copy_files(
        [task_for(path, "Daily SQL copy/a.vbk", durable=durable)], target, RecordingJournal()
    )
    assert not outcome.ok and outcome.error is not None
    assert "already exists" in outcome.error or "symbolic link" in outcome.error
    assert outside_is_untouched(outside)


def test_rename_never_replaces_an_existing_file(target_root: Path, target: LocalLocation) -> None:
    folder = target_root / "Daily SQL copy"
    (folder / "from").write_bytes(b"new")
    (folder / "to").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        target.rename("Daily SQL copy/from", "Daily SQL copy/to")
    assert (folder / "from").read_bytes() == b"new"
    assert (folder / "to").read_bytes() == b"old"
    (folder / "dangling").symlink_to(folder / "nowhere")
    with pytest.raises(FileExistsError):
        target.rename("Daily SQL copy/from", "Daily SQL copy/dangling")
    target.rename("Daily SQL copy/from", "Daily SQL copy/free")
    assert (folder / "free").read_bytes() == b"new" and not (folder / "from").exists()


@pytest.mark.parametrize(
    "rel",
    [
        "../escape.vbk",
        "a/../../escape.vbk",
        "/tmp/escape.vbk",
        "",
        "a//b",
        "a/./b",
        "a/",
        "a\0b",
        "a\\..\\b",
    ],
)
def test_paths_that_could_leave_the_target_are_refused(
    rel: str, source: Path, tmp_path: Path, target: LocalLocation
) -> None:
    with pytest.raises(LocationError):
        split_rel(rel)
    with pytest.raises(LocationError):
        target.open_write(rel, 0)
    path = source / "escape.vbk"
    write_file(path, 100)
    before = sorted(p.name for p in tmp_path.iterdir())
    [outcome] = copy_files([task_for(path, rel)], target, RecordingJournal())
    assert not outcome.ok and outcome.error is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/tmp/escape.vbk").exists()


def test_local_location_basics(target_root: Path, target: LocalLocation) -> None:
    old = os.umask(0o022)
    try:
        assert target.make_dir("new") is True
        assert target.make_dir("new") is False
    finally:
        os.umask(old)
    assert (target_root / "new").stat().st_mode & 0o777 == 0o755
    assert target.is_dir("new") and target.exists("new") and not target.exists("nope")
    assert target.size("nope") is None and target.size("nope/deeper") is None
    out = target.open_write("new/f", 0)
    out.write(b"hello world")
    out.sync()
    out.close()
    out.close()
    assert (target_root / "new" / "f").stat().st_mode & 0o777 == 0o644
    resumed = target.open_write("new/f", 5)
    resumed.write(b"!")
    resumed.close()
    assert target.size("new/f") == 6
    reader: BinaryIO
    with target.open_read("new/f") as reader:
        assert reader.read() == b"hello!"
    with pytest.raises(LocationError, match="fewer than"):
        target.open_write("new/f", 100)
    with pytest.raises(FileNotFoundError):
        target.open_write("missing/f", 0)
    assert target.list_dir("") == ["Daily SQL copy", "new"]
    target.sync_dir("")
    target.sync_dir("new")
    target.remove_file("new/f")
    target.remove_file("new/f")
    target.remove_dir("new")
    target.remove_dir("new")
    assert not target.exists("new")
    free = target.free_bytes()
    assert free is not None and free > 0
    with pytest.raises(LocationError, match="not a folder"):
        (target_root / "file").write_bytes(b"")
        target.make_dir("file")


# -- crashes and memory, in real processes ----------------------------------------------------

CRASH_DRIVER = """
import json, os, sys
from pathlib import Path
from cmdlets.backup.copyengine import FileTask, copy_files
from cmdlets.backup.location import LocalLocation

spec = json.loads(Path(sys.argv[1]).read_text())
journal_path = Path(spec["journal"])
# With a number N: die by SIGKILL once this run has copied N bytes, wherever that falls.
die_after = int(sys.argv[2]) if len(sys.argv) > 2 else 0
copied = 0

def on_bytes(count, rel):
    global copied
    copied += count
    if die_after and copied >= die_after:
        os.kill(os.getpid(), 9)

class FileJournal:
    def __init__(self):
        self.state = json.loads(journal_path.read_text()) if journal_path.exists() else {}
    def save(self):
        tmp = journal_path.with_name(journal_path.name + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, journal_path)
    def progress(self, task, durable):
        self.state.setdefault(task.rel, {})["durable"] = durable
        self.save()
    def done(self, task, sha256):
        self.state.setdefault(task.rel, {})["done"] = sha256
        self.save()

journal = FileJournal()
tasks = []
for t in spec["tasks"]:
    entry = journal.state.get(t["rel"], {})
    if "done" not in entry:
        tasks.append(FileTask(Path(t["source"]), t["rel"], t["size"], t["sha256"],
                              entry.get("durable", 0)))
print("ready", json.dumps({t.rel: t.durable for t in tasks}), flush=True)
outcomes = copy_files(tasks, LocalLocation(Path(spec["target"])), journal,
                      checkpoint_bytes=spec["checkpoint"], on_bytes=on_bytes)
print(json.dumps([[o.task.rel, o.ok, o.error] for o in outcomes]), flush=True)
"""


@pytest.mark.slow
def test_crash_campaign_sigkill_at_random_moments_then_retry_completes(
    source: Path, target_root: Path, tmp_path: Path
) -> None:
    files = {"full.vbk": 32 * MIB, "inc1.vib": 16 * MIB, "inc2.vib": 0, "inc3.vib": 12 * MIB + 1}
    tasks: list[dict[str, Any]] = []
    for name, size in files.items():
        sha256 = write_file(source / name, size)
        tasks.append(
            {
                "source": str(source / name),
                "rel": f"Daily SQL copy/{name}",
                "size": size,
                "sha256": sha256,
            }
        )
    journal_path = tmp_path / "journal.json"
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "tasks": tasks,
                "target": str(target_root),
                "journal": str(journal_path),
                "checkpoint": 256 * 1024,
            }
        )
    )
    driver = tmp_path / "driver.py"
    driver.write_text(CRASH_DRIVER)
    rng = random.Random(20261126)
    killed = 0
    for run in range(12):
        # Even runs die after a random number of bytes of their own (whatever the machine's
        # speed), odd runs at a random moment from outside.
        die_after = [str(rng.randint(1, 20 * MIB))] if run % 2 == 0 else []
        process = subprocess.Popen(
            [sys.executable, str(driver), str(spec), *die_after], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready.startswith("ready"), ready
        pending = json.loads(ready.split(" ", 1)[1])
        if not die_after:
            time.sleep(rng.uniform(0.0, 0.12))  # a whole run takes about 0.2 s here
            process.send_signal(signal.SIGKILL)
        killed += process.wait() == -signal.SIGKILL and bool(pending)
        process.stdout.close()
        # Whatever the moment: a final name only ever holds a complete, verified file, and
        # the journal never claims more than the partial file holds.
        state = json.loads(journal_path.read_text()) if journal_path.exists() else {}
        for task in tasks:
            final = target_root / task["rel"]
            if final.exists():
                assert sha256_of(final) == task["sha256"]
            partial = target_root / partial_name(task["rel"])
            entry = state.get(task["rel"], {})
            if "done" not in entry and entry.get("durable", 0) > 0 and partial.exists():
                assert partial.stat().st_size >= entry["durable"]
    finished = subprocess.run(
        [sys.executable, str(driver), str(spec)], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    results = json.loads(finished.stdout.splitlines()[-1])
    assert all(ok for _, ok, _ in results), results
    state = json.loads(journal_path.read_text())
    for task in tasks:
        assert state[task["rel"]]["done"] == task["sha256"]
        assert sha256_of(target_root / task["rel"]) == task["sha256"]
    assert leftovers(target_root) == []
    assert killed > 0, "no run was killed mid-copy: the campaign tested nothing"
    # How often a kill left durable bytes to resume from depends on the disk (a checkpoint's
    # fsync may not have finished); the resume itself is asserted by the stop-and-resume test.


MEMORY_DRIVER = """
import json, resource, sys
from pathlib import Path
from cmdlets.backup.copyengine import FileTask, copy_files
from cmdlets.backup.location import LocalLocation

class Journal:
    def progress(self, task, durable): pass
    def done(self, task, sha256): pass

source, target, size, sha256 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
[outcome] = copy_files([FileTask(Path(source), "copy/big.vbk", size, sha256)],
                       LocalLocation(Path(target)), Journal())
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"ok": outcome.ok, "error": outcome.error, "peak_kib": peak,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_memory_stays_flat_for_a_large_file(tmp_path: Path) -> None:
    big = tmp_path / "big.vbk"
    size = 300 * MIB
    with big.open("wb") as f:  # sparse-ish: random blocks every 10 MiB, holes between
        for offset in range(0, size, 10 * MIB):
            f.seek(offset)
            f.write(os.urandom(MIB))
        f.truncate(size)
    expected = sha256_of(big)
    (tmp_path / "target" / "copy").mkdir(parents=True)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_DRIVER,
            str(big),
            str(tmp_path / "target"),
            str(size),
            expected,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"], result["error"]
    # VmHWM, the peak of this process's own memory: ru_maxrss starts from the forking
    # parent's (pytest's) resident size, which Linux carries over across exec.
    assert result["peak_kib"] < 80 * 1024, f"peak RSS {result['peak_kib'] // 1024} MiB"
    assert result["maxrss_kib"] >= result["peak_kib"]
    assert sha256_of(tmp_path / "target" / "copy" / "big.vbk") == expected
