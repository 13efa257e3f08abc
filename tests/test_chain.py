"""Backup chains: writing restore points, restoring every one of them, verifying, surviving a
crash. See docs/backup-format.md for the format these tests hold the code to."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from trees import edit, snapshot

from cmdlets.backup import restorepoint
from cmdlets.backup.chain import (
    FULL,
    INCREMENT,
    BackupFormatError,
    BackupMetadata,
    InvalidNameError,
    backup_folder,
    find_backups,
    parse_restore_point_file_name,
    read_metadata,
    restore_point_file_name,
    select_point,
    write_metadata,
)
from cmdlets.backup.pointindex import INDEX_MEMBER, read_index
from cmdlets.backup.restore import restore_point
from cmdlets.backup.restorepoint import SourceError, write_restore_point
from cmdlets.backup.verify import verify_backup
from cmdlets.host.errors import BcsError, InvalidOperationError, NotFoundError

ROOT = Path(__file__).resolve().parent.parent
JOB = "Daily SQL"
MiB = 1 << 20


class Clock:
    """A clock one hour further on at every reading: point names never collide by accident."""

    def __init__(self, start: datetime | None = None, step: timedelta = timedelta(hours=1)):
        self.time = start or datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        self.step = step

    def __call__(self) -> datetime:
        self.time += self.step
        return self.time


def take(backup: Path, source: Path, clock: Clock, **kwargs: Any) -> Any:
    return write_restore_point(backup, JOB, "backup-job", source, now=clock, **kwargs)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "data"
    edit(src / "docs" / "a.txt", b"alpha\n")
    edit(src / "docs" / "deep" / "b.bin", os.urandom(5000))
    edit(src / "keep.txt", b"never changes\n")
    edit(src / "private.key", b"secret\n", mode=0o600)
    edit(src / "run.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    (src / "empty").mkdir()
    os.symlink("docs/a.txt", src / "link")
    os.symlink("/etc/hostname", src / "absolute-link")
    os.symlink("docs", src / "dir-link")
    return src


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


@pytest.fixture
def small_backup(source: Path, repo: Path) -> Path:
    """A backup with a full and one increment."""
    backup = repo / JOB
    clock = Clock()
    take(backup, source, clock)
    edit(source / "docs" / "a.txt", b"alpha, edited\n")
    take(backup, source, clock)
    return backup


# --- round trip ------------------------------------------------------------------------------


def test_every_restore_point_restores_the_tree_it_was_taken_from(
    source: Path, repo: Path, tmp_path: Path
) -> None:
    backup = repo / JOB
    clock = Clock()
    states: list[dict[str, tuple[Any, ...]]] = []

    def point(**kwargs: Any) -> None:
        take(backup, source, clock, **kwargs)
        states.append(snapshot(source))

    edit(source / "big.bin", os.urandom(20 * MiB))
    point()  # 0: full

    edit(source / "new.txt", b"a new file\n")
    edit(source / "docs" / "a.txt", b"ALPHA\n")  # same size, new content
    (source / "keep.txt").chmod(0o640)  # mode only
    os.unlink(source / "private.key")
    edit(source / "x" / "y" / "z" / "nested.txt", b"deep inside\n")
    (source / "x" / "empty-too").mkdir()
    edit(source / "empty-file", b"")
    os.symlink("x/y", source / "link-to-new-dir")
    point()  # 1: increment

    with open(source / "big.bin", "r+b") as f:  # one block changed in the middle
        f.seek(10 * MiB)
        f.write(os.urandom(4096))
    stamp = 1_800_000_000_000_000_000
    os.utime(source / "big.bin", ns=(stamp, stamp))
    os.unlink(source / "run.sh")
    (source / "run.sh").mkdir()  # a file becomes a folder
    edit(source / "run.sh" / "inside.txt", b"was a file\n")
    os.unlink(source / "link")
    edit(source / "link", b"was a symlink\n")  # a symlink becomes a file
    for path in sorted((source / "docs" / "deep").iterdir()):
        path.unlink()
    (source / "docs" / "deep").rmdir()
    os.symlink("../keep.txt", source / "docs" / "deep")  # a folder becomes a symlink
    (source / "x" / "y").chmod(0o555)  # read-only folder
    point()  # 2: increment

    edit(source / "after-full.txt", b"written before the second full\n")
    point(full=True)  # 3: full again

    (source / "after-full.txt").unlink()
    edit(source / "docs" / "a.txt", b"alpha, third edit\n")
    point()  # 4: increment on the second full

    meta = read_metadata(backup)
    assert [p.kind for p in meta.restore_points] == [FULL, INCREMENT, INCREMENT, FULL, INCREMENT]
    assert [p.index for p in meta.restore_points] == [0, 1, 2, 3, 4]
    # Increments hold what changed, not the 20 MiB file again.
    assert meta.restore_points[1].size < MiB
    assert meta.restore_points[2].size < 21 * MiB
    for index, expected in enumerate(states):
        destination = tmp_path / f"restored-{index}"
        restored = restore_point(backup, destination, index)
        assert restored == meta.restore_points[index]
        assert snapshot(destination) == expected, f"restore point {index}"
    assert verify_backup(backup) == []


def test_restore_latest_is_the_default_and_negative_indexes_count_from_the_end(
    small_backup: Path, source: Path, tmp_path: Path
) -> None:
    latest = restore_point(small_backup, tmp_path / "latest")
    assert latest.index == 1
    assert snapshot(tmp_path / "latest") == snapshot(source)
    assert restore_point(small_backup, tmp_path / "first", -2).index == 0
    assert (tmp_path / "first" / "docs" / "a.txt").read_bytes() == b"alpha\n"
    with pytest.raises(NotFoundError):
        restore_point(small_backup, tmp_path / "none", 2)


def test_restore_point_file_is_a_tar_whose_first_member_is_the_index(small_backup: Path) -> None:
    meta = read_metadata(small_backup)
    with tarfile.open(small_backup / meta.restore_points[1].file) as tar:
        names = tar.getnames()
    assert names[0] == INDEX_MEMBER
    assert names[1:] == ["docs/a.txt"]  # only the changed file
    index = read_index(small_backup / meta.restore_points[1].file)
    assert index.kind == INCREMENT
    assert index.base == meta.restore_points[0].file
    assert index.entries["docs/a.txt"].stored
    assert index.entries["link"].target == "docs/a.txt"
    assert index.entries["private.key"].mode == 0o600


def test_unchanged_source_gives_an_increment_without_data(small_backup: Path, source: Path) -> None:
    point = take(small_backup, source, Clock(datetime(2030, 1, 1, tzinfo=UTC)))
    assert point.kind == INCREMENT
    with tarfile.open(small_backup / point.file) as tar:
        assert tar.getnames() == [INDEX_MEMBER]


def test_deleted_paths_are_recorded(small_backup: Path, source: Path) -> None:
    (source / "docs" / "deep" / "b.bin").unlink()
    (source / "docs" / "deep").rmdir()
    point = take(small_backup, source, Clock(datetime(2030, 1, 1, tzinfo=UTC)))
    assert read_index(small_backup / point.file).deleted == ["docs/deep", "docs/deep/b.bin"]


def test_file_names_that_are_not_utf8_round_trip(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "odd"
    source.mkdir()
    odd = os.fsdecode(b"caf\xe9.txt")  # Latin-1 name on a UTF-8 system
    (source / odd).write_bytes(b"bytes")
    (source / "日本語").mkdir()
    take(repo / JOB, source, Clock())
    restore_point(repo / JOB, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(source)


def test_the_backup_folder_inside_the_source_is_left_out(tmp_path: Path) -> None:
    source = tmp_path / "data"
    edit(source / "file.txt", b"data\n")
    repository = source / "repo"
    repository.mkdir()
    take(backup_folder(repository, JOB), source, Clock())
    take(backup_folder(repository, JOB), source, Clock(datetime(2030, 1, 1, tzinfo=UTC)))
    restore_point(repository / JOB, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["file.txt", "repo"]
    assert os.listdir(tmp_path / "out" / "repo") == []


# --- names -----------------------------------------------------------------------------------


def test_restore_point_names_with_spaces_in_the_job_name(small_backup: Path) -> None:
    meta = read_metadata(small_backup)
    assert small_backup.name == JOB
    assert sorted(os.listdir(small_backup)) == [
        "Daily SQL.vbm",
        "Daily SQL_2024-05-01T130000.vbk",
        "Daily SQL_2024-05-01T140000.vib",
    ]
    for point in meta.restore_points:
        parsed = parse_restore_point_file_name(JOB, point.file)
        assert parsed is not None
        assert parsed == (point.time, point.kind)
    when = datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC)
    assert restore_point_file_name("A B  C", when, FULL) == "A B  C_2024-12-31T235958.vbk"
    assert parse_restore_point_file_name("A B", "A B_2024-12-31T235958.vib") == (when, INCREMENT)
    assert parse_restore_point_file_name("A", "A B_2024-12-31T235958.vib") is None
    assert parse_restore_point_file_name("A", "A_2024-13-31T235958.vib") is None


def test_points_taken_within_one_second_get_distinct_names(source: Path, repo: Path) -> None:
    stopped = Clock(step=timedelta(0))
    files = [take(repo / JOB, source, stopped).file for _ in range(3)]
    assert files == [
        "Daily SQL_2024-05-01T120000.vbk",
        "Daily SQL_2024-05-01T120001.vib",
        "Daily SQL_2024-05-01T120002.vib",
    ]
    assert verify_backup(repo / JOB) == []


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "a\\b", "tab\there", "x" * 201])
def test_names_that_would_leave_their_folder_are_refused(repo: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        backup_folder(repo, name)


# --- metadata --------------------------------------------------------------------------------


def test_metadata_format(small_backup: Path) -> None:
    data = json.loads((small_backup / "Daily SQL.vbm").read_text())
    assert data["FormatVersion"] == 1
    assert data["JobName"] == JOB and data["JobType"] == "backup-job"
    assert data["CreationTime"] == "2024-05-01T13:00:00Z"
    first = data["RestorePoints"][0]
    assert set(first) == {"File", "Kind", "Time", "Size", "Sha256", "Index"}
    path = small_backup / first["File"]
    assert first["Size"] == path.stat().st_size
    assert first["Sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    meta = read_metadata(small_backup)
    assert meta.size == sum(p["Size"] for p in data["RestorePoints"])
    assert meta.last_point_time == datetime(2024, 5, 1, 14, tzinfo=UTC)
    assert stat.S_IMODE(small_backup.stat().st_mode) == 0o755 & ~_umask()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "metadata file is missing"),
        (b"{not json", "not valid JSON"),
        (b'{"FormatVersion": 2}', "unknown metadata FormatVersion 2"),
        (b"[]", "not a JSON object"),
    ],
)
def test_unreadable_metadata_is_an_error_naming_the_file(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    folder = tmp_path / "Broken"
    folder.mkdir()
    if content is not None:
        (folder / "Broken.vbm").write_bytes(content)
    with pytest.raises(BackupFormatError) as caught:
        read_metadata(folder)
    assert message in str(caught.value)
    assert str(folder / "Broken.vbm") in str(caught.value)
    assert verify_backup(folder) == [str(caught.value)]


def test_metadata_naming_a_file_outside_the_folder_is_refused(small_backup: Path) -> None:
    path = small_backup / "Daily SQL.vbm"
    data = json.loads(path.read_text())
    data["RestorePoints"][0]["File"] = "../../etc/passwd.vbk"
    path.write_text(json.dumps(data))
    with pytest.raises(BackupFormatError, match="not a plain file name"):
        read_metadata(small_backup)


def test_a_copy_under_another_folder_name_is_read_through_its_vbm(
    small_backup: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere" / "Daily SQL (copy)"
    copy.parent.mkdir()
    os.rename(small_backup, copy)
    assert read_metadata(copy).job_name == JOB
    assert verify_backup(copy) == []
    restore_point(copy, tmp_path / "out")


def test_find_backups_reports_a_bad_folder_and_goes_on(small_backup: Path, repo: Path) -> None:
    (repo / "Broken").mkdir()
    (repo / "Broken" / "Broken.vbm").write_text("{")
    (repo / "not a backup").mkdir()
    (repo / "stray-file.txt").write_text("x")
    problems: list[BcsError] = []
    found = find_backups(repo, on_problem=problems.append)
    assert [(path.name, meta.job_name) for path, meta in found] == [(JOB, JOB)]
    assert len(problems) == 1 and "Broken.vbm" in str(problems[0])
    assert find_backups(repo) == found  # problems are optional
    missing: list[BcsError] = []
    assert find_backups(repo / "absent", on_problem=missing.append) == []
    assert isinstance(missing[0], NotFoundError)


def test_select_point(small_backup: Path) -> None:
    meta = read_metadata(small_backup)
    first, last = meta.restore_points
    assert select_point(meta, "latest") == last
    assert select_point(meta, "LATEST") == last
    assert select_point(meta, "0") == first
    assert select_point(meta, "-1") == last
    assert select_point(meta, first.file) == first
    assert select_point(meta, "2024-05-01T13:30:00Z") == first
    assert select_point(meta, "2024-05-01T13:30") == first  # no offset: UTC, like the names
    assert select_point(meta, "2024-05-01T15:30:00+01:00") == last
    assert select_point(meta, "2024-05-02") == last
    for spec in ("2", "-3", "2024-05-01T12:59:59Z", "yesterday"):
        with pytest.raises(NotFoundError):
            select_point(meta, spec)
    empty = BackupMetadata("id", JOB, "backup-job", first.time)
    with pytest.raises(NotFoundError):
        select_point(empty, "latest")


# --- errors from the source and the destination -----------------------------------------------


def test_missing_source_is_a_clear_error(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist") as caught:
        take(repo / JOB, tmp_path / "nowhere", Clock())
    assert caught.value.error_id == "SourceNotFound"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SourceError, match="is not a folder"):
        take(repo / JOB, tmp_path / "a-file", Clock())
    assert not (repo / JOB / "Daily SQL.vbm").exists()


def test_missing_repository_folder_is_not_created(source: Path, tmp_path: Path) -> None:
    # An unmounted repository must not be "created" on the root filesystem.
    with pytest.raises(NotFoundError, match="repository folder"):
        take(tmp_path / "unmounted" / JOB, source, Clock())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file_in_the_source_fails_the_point(source: Path, repo: Path) -> None:
    (source / "keep.txt").chmod(0)
    with pytest.raises(SourceError, match=r"keep\.txt"):
        take(repo / JOB, source, Clock())
    assert os.listdir(repo / JOB) == []


def test_restore_refuses_a_destination_that_is_not_empty(
    small_backup: Path, source: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "out"
    edit(destination / "docs" / "a.txt", b"old")
    edit(destination / "unrelated.txt", b"mine")
    os.symlink("/", destination / "link")
    with pytest.raises(InvalidOperationError, match="not empty") as caught:
        restore_point(small_backup, destination)
    assert caught.value.error_id == "DestinationNotEmpty"
    restore_point(small_backup, destination, force=True)
    restored = snapshot(destination)
    assert restored.pop("unrelated.txt")[3] == b"mine"  # files outside the point stay
    assert restored == snapshot(source)


def test_a_changing_file_makes_the_point_be_written_again(
    source: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = restorepoint._hash_file
    calls: list[str] = []

    def stale_first_time(path: str) -> tuple[int, str] | None:
        calls.append(path)
        result = real(path)
        if result is not None and path.endswith("a.txt") and calls.count(path) == 1:
            return result[0], "0" * 64  # as if it changed between hashing and archiving
        return result

    monkeypatch.setattr(restorepoint, "_hash_file", stale_first_time)
    take(repo / JOB, source, Clock())
    restore_point(repo / JOB, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(source)

    edit(source / "docs" / "a.txt", b"alpha, edited\n")  # so that it gets hashed again
    monkeypatch.setattr(restorepoint, "_hash_file", lambda path: (14, "0" * 64))
    with pytest.raises(SourceError, match="changed while it was being backed up") as caught:
        take(repo / JOB, source, Clock(), full=True)
    assert caught.value.error_id == "SourceChanged"
    assert [n for n in os.listdir(repo / JOB) if n.endswith(".partial")] == []
    assert len(read_metadata(repo / JOB).restore_points) == 1


# --- verification --------------------------------------------------------------------------


def test_a_sound_backup_has_no_problems(small_backup: Path) -> None:
    assert verify_backup(small_backup) == []


def test_verify_finds_a_flipped_byte_in_an_increment(small_backup: Path) -> None:
    vib = next(small_backup.glob("*.vib"))
    with open(vib, "r+b") as f:
        f.seek(700)  # inside the index: the tar still reads, only the checksum can tell
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0x01]))
    problems = verify_backup(small_backup)
    assert len(problems) == 1
    assert problems[0].startswith(vib.name + ": checksum mismatch")


def test_verify_finds_a_truncated_full(small_backup: Path) -> None:
    vbk = next(small_backup.glob("*.vbk"))
    size = vbk.stat().st_size
    os.truncate(vbk, size - 512)
    assert verify_backup(small_backup) == [
        f"{vbk.name}: truncated: {size - 512} bytes, the metadata records {size}"
    ]


def test_verify_finds_a_missing_file(small_backup: Path) -> None:
    vib = next(small_backup.glob("*.vib"))
    vib.unlink()
    assert verify_backup(small_backup) == [f"{vib.name}: missing"]
    with pytest.raises(BackupFormatError, match="missing"):
        restore_point(small_backup, small_backup.parent / "out")


def test_verify_finds_a_chain_that_does_not_start_with_a_full(small_backup: Path) -> None:
    meta = read_metadata(small_backup)
    write_metadata(
        small_backup,
        BackupMetadata(
            meta.backup_id,
            meta.job_name,
            meta.job_type,
            meta.creation_time,
            (meta.restore_points[1].__class__(**{**vars(meta.restore_points[1]), "index": 0}),),
        ),
    )
    problems = verify_backup(small_backup)
    assert any("starts with an increment" in p for p in problems)
    assert any("built on" in p for p in problems)
    with pytest.raises(BackupFormatError, match="no full restore point"):
        restore_point(small_backup, small_backup.parent / "out")


# --- crashes -------------------------------------------------------------------------------


def test_leftovers_of_a_crash_are_ignored_then_cleaned(small_backup: Path, source: Path) -> None:
    before = read_metadata(small_backup)
    leftovers = [
        ".Daily SQL_2024-05-01T150000.vib.partial",  # killed while writing
        "Daily SQL_2024-05-01T150000.vib",  # killed between rename and metadata
        ".Daily SQL.vbm.12345.tmp",  # killed while writing the metadata
    ]
    for name in leftovers:
        (small_backup / name).write_bytes(b"half written")
    assert read_metadata(small_backup) == before
    assert verify_backup(small_backup) == []
    assert [path.name for path, _ in find_backups(small_backup.parent)] == [JOB]

    point = take(small_backup, source, Clock(datetime(2024, 5, 1, 15, tzinfo=UTC)))
    assert point.index == 2
    for name in leftovers:
        assert not (small_backup / name).exists(), name
    assert verify_backup(small_backup) == []


_WRITER = """
import sys
from pathlib import Path
from cmdlets.backup.restorepoint import write_restore_point
write_restore_point(Path(sys.argv[1]), sys.argv[2], "backup-job", Path(sys.argv[3]))
"""


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def _environ() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_a_writer_killed_mid_point_leaves_the_previous_chain_valid(
    small_backup: Path, source: Path, tmp_path: Path
) -> None:
    before = read_metadata(small_backup)
    with open(source / "big.bin", "wb") as f:
        for _ in range(200):
            f.write(os.urandom(MiB))
    writer = subprocess.Popen(_python(_WRITER, str(small_backup), JOB, str(source)), env=_environ())
    try:
        partial = _wait_for(lambda: _partial_with_data(small_backup), writer, timeout=60)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert partial.exists()

    assert read_metadata(small_backup) == before
    assert verify_backup(small_backup) == []
    restore_point(small_backup, tmp_path / "previous")
    assert (tmp_path / "previous" / "docs" / "a.txt").read_bytes() == b"alpha, edited\n"

    point = write_restore_point(small_backup, JOB, "backup-job", source)
    assert not partial.exists()
    assert point.index == 2
    assert verify_backup(small_backup) == []
    restore_point(small_backup, tmp_path / "after")
    assert snapshot(tmp_path / "after") == snapshot(source)


def _partial_with_data(folder: Path) -> Path | None:
    for path in folder.glob(".*.partial"):
        with_data = path.stat().st_size > MiB
        if with_data:
            return path
    return None


def _wait_for(
    found: Callable[[], Path | None], process: subprocess.Popen[bytes], timeout: float
) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = found()
        if result is not None:
            return result
        assert process.poll() is None, "the writer finished before it could be killed"
        time.sleep(0.002)
    raise AssertionError("no .partial file appeared")


_MEASURE = """
import resource, sys
from pathlib import Path
from cmdlets.backup.restorepoint import write_restore_point
from cmdlets.backup.restore import restore_point
from cmdlets.backup.verify import verify_backup
backup = Path(sys.argv[1])
write_restore_point(backup, "Big", "backup-job", Path(sys.argv[2]))
assert verify_backup(backup) == []
restore_point(backup, Path(sys.argv[3]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.slow
def test_memory_stays_flat_with_a_large_file(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.mkdir()
    with open(source / "big.bin", "wb") as f:
        for _ in range(150):
            f.write(os.urandom(MiB))
    out = subprocess.run(
        _python(_MEASURE, str(repo / "Big"), str(source), str(tmp_path / "out")),
        env=_environ(),
        capture_output=True,
        text=True,
        check=True,
    )
    peak_mib = int(out.stdout)
    assert peak_mib < 80, f"peak resident memory {peak_mib} MiB for a 150 MiB file"
    assert (tmp_path / "out" / "big.bin").stat().st_size == 150 * MiB


# --- hostile archives ------------------------------------------------------------------------


def _craft(backup: Path, members: Iterator[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    """Replace the backup's only restore point by a hand-made archive, with metadata to match
    (so the checksum is right and only the content can be refused)."""
    meta = read_metadata(backup)
    point = meta.restore_points[0]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buffer.getvalue()
    (backup / point.file).write_bytes(raw)
    fixed = point.__class__(
        **{**vars(point), "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    )
    write_metadata(backup, BackupMetadata(**{**vars(meta), "restore_points": (fixed,)}))


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mode = 0o644
    return info, (data if kind == tarfile.REGTYPE else None)


def _index(entries: dict[str, Any]) -> Any:
    index = {
        "format_version": 1,
        "kind": "Full",
        "time": "2024-05-01T13:00:00Z",
        "base": None,
        "entries": entries,
        "deleted": [],
    }
    return _member(INDEX_MEMBER, json.dumps(index).encode())


def _file_entry(data: bytes) -> dict[str, Any]:
    return {
        "type": "file",
        "mode": 0o644,
        "size": len(data),
        "mtime_ns": 0,
        "sha256": hashlib.sha256(data).hexdigest(),
        "stored": True,
    }


@pytest.fixture
def one_point(repo: Path, tmp_path: Path) -> Path:
    source = tmp_path / "plain"
    edit(source / "a.txt", b"fine\n")
    take(repo / "Plain", source, Clock())
    return repo / "Plain"


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("../evil", b"evil"), "outside the destination"),
        (_member("/tmp/evil-absolute", b"evil"), "outside the destination"),
        (_member("a/../../evil", b"evil"), "outside the destination"),
        (_member("evil", kind=tarfile.LNKTYPE, link="/etc/passwd"), "hard links"),
        (_member("evil", kind=tarfile.FIFOTYPE), "not a file, folder or symlink"),
        (_member("unlisted.txt", b"evil"), "does not list it"),
    ],
)
def test_restore_refuses_hostile_members_before_writing_anything(
    one_point: Path, tmp_path: Path, member: Any, reason: str
) -> None:
    good = b"fine\n"
    _craft(one_point, iter([_index({"a.txt": _file_entry(good)}), _member("a.txt", good), member]))
    assert verify_backup(one_point) == []  # the checksum matches: the content is what's wrong
    destination = tmp_path / "out"
    with pytest.raises(BackupFormatError, match=reason) as caught:
        restore_point(one_point, destination)
    assert caught.value.error_id == "UnsafeArchiveMember"
    assert member[0].name in str(caught.value)
    assert not destination.exists()
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-absolute").exists()


def test_restore_never_writes_through_a_symlink(one_point: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = b"evil"
    entries = {
        "link": {"type": "symlink", "mode": 0o777, "size": 0, "mtime_ns": 0,
                 "target": str(outside)},
        "link/evil": _file_entry(evil),
    }  # fmt: skip
    _craft(
        one_point,
        iter(
            [
                _index(entries),
                _member("link", kind=tarfile.SYMTYPE, link=str(outside)),
                _member("link/evil", evil),
            ]
        ),
    )
    with pytest.raises(BackupFormatError, match="parent is not a directory"):
        restore_point(one_point, tmp_path / "out")
    assert os.listdir(outside) == []


def test_restore_checks_file_contents_against_the_index(one_point: Path, tmp_path: Path) -> None:
    _craft(
        one_point, iter([_index({"a.txt": _file_entry(b"fine\n")}), _member("a.txt", b"evil\n")])
    )
    with pytest.raises(BackupFormatError, match="does not match its SHA-256"):
        restore_point(one_point, tmp_path / "out")
