"""Copy throughput: the bcs copy engine against cp, rsync and rclone on a 1.1 GiB chain.

The chain is two 400 MiB fulls and forty 8 MiB increments of random data plus the ``.vbm``,
copied to a folder on the same disk. Every tool is timed until its copy is durable: the bcs
engine fsyncs every file and folder itself; the others are followed by ``sync``. The source
stays in the page cache for all of them alike; the target is removed (and the removal synced)
between runs. Peak RSS is the bcs child's ``VmHWM``: ``ru_maxrss`` would be no use, as Linux
carries the forking parent's resident size over into the child's, also across ``exec``.

Targets: bcs at most 1.25x cp (aim 1.1x) and at most 0.6x rsync, peak RSS under 80 MiB.

Run ``python bench/copy_bench.py [--repeat N] [--work DIR]``; ``bench_copy`` returns the rows
for ``bench/run_bench.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tables import print_table

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
JOB = "Bench SQL"
FULLS, FULL_MIB = 2, 400
INCREMENTS, INCREMENT_MIB = 40, 8
HEADER = ["copy", "median s", "MiB/s", "ratio to cp", "ratio to rsync", "peak RSS MiB"]

# Run in a child process so that its peak RSS is its own; prints it on success.
BCS_CHILD = """
import json, sys
from pathlib import Path
from cmdlets.backup.copyengine import FileTask, copy_files
from cmdlets.backup.location import LocalLocation

spec = json.loads(Path(sys.argv[1]).read_text())
target = LocalLocation(Path(spec["target"]))
target.make_dir(spec["folder"])

class Journal:
    def progress(self, task, durable): pass
    def done(self, task, sha256): pass

tasks = [FileTask(Path(t["source"]), t["rel"], t["size"], t["sha256"]) for t in spec["tasks"]]
points, metadata = tasks[:-1], tasks[-1:]
outcomes = copy_files(points, target, Journal(), workers=spec["workers"])
if all(o.ok for o in outcomes):  # the .vbm only once its chain is complete
    outcomes += copy_files(metadata, target, Journal())
failed = [o.error for o in outcomes if not o.ok]
if failed:
    sys.exit("; ".join(str(e) for e in failed))
with open("/proc/self/status") as status:
    print(next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")))
"""


def build_chain(folder: Path) -> list[dict[str, Any]]:
    """Write the chain into ``folder``; return its files as tasks, the ``.vbm`` last."""
    from cmdlets.backup.chain import (
        BACKUP_JOB,
        FULL,
        INCREMENT,
        BackupMetadata,
        RestorePointInfo,
        restore_point_file_name,
        write_metadata,
    )

    folder.mkdir(parents=True)
    start = datetime(2026, 11, 1, 10, 15, tzinfo=UTC)
    meta = BackupMetadata("bench-backup", JOB, BACKUP_JOB, start)
    kinds = [FULL] + [INCREMENT] * (INCREMENTS // FULLS)
    for index, kind in enumerate(kinds * FULLS):
        time_taken = start + timedelta(hours=index)
        name = restore_point_file_name(JOB, time_taken, kind)
        size = (FULL_MIB if kind == FULL else INCREMENT_MIB) * MIB
        sha256 = _write_random(folder / name, size)
        meta = meta.with_point(RestorePointInfo(name, kind, time_taken, size, sha256, index))
    write_metadata(folder, meta)
    tasks = [
        {"source": str(folder / p.file), "size": p.size, "sha256": p.sha256}
        for p in meta.restore_points
    ]
    vbm = folder / meta.metadata_file
    tasks.append({"source": str(vbm), "size": vbm.stat().st_size, "sha256": None})
    return tasks


def _write_random(path: Path, size: int) -> str:
    assert size % (4 * MIB) == 0
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // (4 * MIB)):
            data = os.urandom(4 * MIB)
            digest.update(data)
            f.write(data)
    return digest.hexdigest()


def run_measured(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """(wall seconds, standard output) of one command, which must succeed."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stdout


def _sync() -> float:
    started = time.perf_counter()
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started


def _tool(name: str) -> str | None:
    """The path of a tool, installing it with apt-get when missing and running as root."""
    found = shutil.which(name)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    policy = subprocess.run(["apt-cache", "policy", name], capture_output=True, text=True)
    if "Candidate: (none)" in policy.stdout or "Candidate:" not in policy.stdout:
        return None
    subprocess.run(
        ["apt-get", "install", "-y", "-q", name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return shutil.which(name)


# The real cmdlet in a child that reports its own peak RSS when it ends.
CMDLET_CHILD = """
import atexit, sys
from cmdlets.host.runner import main

def peak():
    with open("/proc/self/status") as status:
        kib = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
    sys.stderr.write(f"VmHWM {kib}\\n")

atexit.register(peak)
sys.argv = sys.argv[1:]
main()
"""

INVENTORY = """\
version: 1
repositories:
  - name: Source
    path: ./source
jobs:
  - name: {job}
    type: backup-job
    repository: Source
    source: ./data
"""


def _cmdlet(
    work: Path, env: dict[str, str], *argv: str, ok: tuple[int, ...] = (0,)
) -> tuple[float, int, str]:
    """(seconds, peak RSS KiB, stdout) of one cmdlet run in ``work``."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CMDLET_CHILD, *argv],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in ok:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    peak = next(
        int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("VmHWM")
    )
    return seconds, peak, done.stdout


def session_runner(work: Path, env: dict[str, str]) -> Callable[[], tuple[float, int | None]]:
    """A whole copy session through the real Start-BackupCopy (checks, holds, journal, .vbm,
    registration), timed until durable, into a new folder each time."""
    (work / "inventory.yaml").write_text(INVENTORY.format(job=JOB))
    (work / "data").mkdir(exist_ok=True)
    runs = iter(range(1_000_000))

    def run() -> tuple[float, int | None]:
        folder = f"copies/{next(runs)}"
        took, rss, _ = _cmdlet(work, env, "Start-BackupCopy", JOB, "-Path", folder)
        seconds = took + _sync()
        shutil.rmtree(work / folder)
        return seconds, rss

    return run


RETRY_CHILD = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path
from cmdlets.backup import copying, sessions
from cmdlets.backup.inventory import load_inventory
from cmdlets.store import StateDir

# Work on the session in this process and stop it, like Ctrl-C, once 90% of the bytes are in.
state = StateDir(Path(".bcs"))
session_id = sys.argv[1]
record = sessions.read(state, session_id)
total = sum(b["BytesTotal"] for b in record["Backups"])
copied = [0]
def count(n, rel):
    copied[0] += n
lock = sessions.claim(state, session_id)
inventory = load_inventory(Path("inventory.yaml"))
done = copying.run(state, inventory, session_id, lambda: datetime.now(UTC), count,
                   lambda: copied[0] >= 0.9 * total)
print(json.dumps({"State": done["State"], "Copied": copied[0], "Total": total}))
"""


def _retry_after_stop(work: Path, env: dict[str, str]) -> str:
    # -WhatIf would not create the session: start it for real, with a worker we stop at once,
    # then work on it here up to 90% of the bytes.
    from cmdlets.backup import copying, sessions
    from cmdlets.backup.catalog import all_backups
    from cmdlets.backup.inventory import load_inventory
    from cmdlets.store import StateDir

    inventory = load_inventory(work / "inventory.yaml")
    state = StateDir(work / ".bcs")
    backups = [b for b in all_backups(inventory, state) if b.name == JOB and b.origin == "Job"]
    target = copying.choose_target(inventory, backups, None, "copies/retry", work)
    record = copying.plan(
        inventory, backups, target, None, work / "inventory.yaml", datetime.now(UTC)
    )
    sessions.create(state, record)
    copying.take_holds(state, inventory, record, lambda: datetime.now(UTC))
    done = subprocess.run(
        [sys.executable, "-c", RETRY_CHILD, record["Id"]],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    first = json.loads(done.stdout)
    if first["State"] != "ActionRequired":
        return "the copy finished before it could be stopped"
    _, _, out = _cmdlet(work, env, "Resume-CopySession", "-Id", record["Id"], "-Action", "Retry")
    retried = json.loads(out)
    total = first["Total"]
    written = retried["Actions"][-1].get("BytesWritten", 0)
    return (
        f"stopped at {first['Copied'] / total:.0%} of the bytes; Retry wrote "
        f"{written / total:.1%} of the total ({written / MIB:.0f} of {total / MIB:.0f} MiB), "
        f"result {retried['Result']}"
    )


def bench_copy(work: Path, repeat: int = 3) -> list[list[str]]:
    """Build the chain under ``work``, time each way of copying it; rows as in ``HEADER``."""
    source = work / "source" / JOB
    tasks = build_chain(source)
    total = sum(t["size"] for t in tasks)
    target = work / "target"
    spec_file = work / "bcs-spec.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BCS_")}
    env["PYTHONPATH"] = str(ROOT)
    # Byte-compiled, as installed: compiling bcs on every run is not what users wait for.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "cmdlets")], check=True)

    def bcs(workers: int) -> tuple[float, int | None]:
        spec = {
            "target": str(target),
            "folder": JOB,
            "workers": workers,
            "tasks": [{**t, "rel": f"{JOB}/{Path(t['source']).name}"} for t in tasks],
        }
        spec_file.write_text(json.dumps(spec))
        target.mkdir()
        seconds, out = run_measured([sys.executable, "-c", BCS_CHILD, str(spec_file)], env)
        return seconds, int(out.split()[-1])

    def then_sync(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int | None]:
        target.mkdir()
        seconds, _ = run_measured(argv, env)
        return seconds + _sync(), None

    ways: dict[str, Callable[[], tuple[float, int | None]]] = {
        "Start-BackupCopy (whole session, synchronous)": session_runner(work, env),
        "bcs copy_files (2 workers, verified, fsync)": lambda: bcs(2),
        "bcs copy_files (1 worker, verified, fsync)": lambda: bcs(1),
        "cp -r + sync": lambda: then_sync(["cp", "-r", str(source), str(target)]),
    }
    missing: dict[str, str] = {}
    rsync = _tool("rsync")
    if rsync:
        ways["rsync -a + sync"] = lambda: then_sync([rsync, "-a", str(source), str(target)])
    else:
        missing["rsync -a + sync"] = "not installed"
    rclone = _tool("rclone")
    if rclone:
        rclone_env = {**os.environ, "RCLONE_CONFIG": str(work / "rclone.conf")}
        (work / "rclone.conf").write_text("")
        ways["rclone copy --checksum + sync"] = lambda: then_sync(
            [rclone, "copy", "--checksum", "-q", str(source), str(target / JOB)], rclone_env
        )
    else:
        missing["rclone copy --checksum + sync"] = "not installed"

    samples: dict[str, list[float]] = {name: [] for name in ways}
    peaks: dict[str, int | None] = dict.fromkeys(ways)
    _sync()  # the chain just written must not be flushed during the first measurement
    for _ in range(repeat):
        for name, run in ways.items():  # interleaved, so that disk drift hits all alike
            shutil.rmtree(target, ignore_errors=True)
            _sync()
            seconds, rss = run()
            samples[name].append(seconds)
            if rss is not None:
                peaks[name] = max(peaks[name] or 0, rss)
    shutil.rmtree(target, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    cp = medians["cp -r + sync"]
    rsync_median = medians.get("rsync -a + sync")
    rows = []
    for name, seconds in medians.items():
        rows.append(
            [
                name,
                f"{seconds:.2f}",
                f"{total / MIB / seconds:.0f}",
                f"{seconds / cp:.2f}",
                f"{seconds / rsync_median:.2f}" if rsync_median else "-",
                "-" if peaks[name] is None else f"{(peaks[name] or 0) / 1024:.1f}",
            ]
        )
    rows += [[name, reason, "-", "-", "-", "-"] for name, reason in missing.items()]
    rows.append(["Retry after a stop near 90%", _retry_after_stop(work, env), "-", "-", "-", "-"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, help="a folder on the disk to measure (default: "
                        "a temporary folder in the repository)")  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    total_mib = FULLS * FULL_MIB + INCREMENTS * INCREMENT_MIB
    title = (
        f"Copying a chain of {FULLS} x {FULL_MIB} MiB + {INCREMENTS} x {INCREMENT_MIB} MiB "
        f"({total_mib} MiB), median of {args.repeat} on {os.cpu_count()} cores "
        "(targets: bcs <= 1.25x cp, <= 0.6x rsync, peak RSS < 80 MiB)"
    )
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bcs-copy-bench-", dir=args.work or ROOT) as tmp:
        rows = bench_copy(Path(tmp), args.repeat)
    print_table(title, HEADER, rows)


if __name__ == "__main__":
    main()
