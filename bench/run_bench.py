"""`make bench`: measured performance, printed as tables of medians and ratios.

Sections run in one process, on data they create under bench-data/ (removed afterwards).
Nothing here is asserted: targets are printed beside the measurements.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from tables import print_table  # noqa: E402 - found through the line above

BIN = Path(sys.executable).parent


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run_quiet(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, check=True)


def bench_cold_start(work: Path, repeat: int) -> None:
    """Cold start of Get-BackupJob on a 200-job inventory against a bare interpreter."""
    lines = ["version: 1", "repositories:", "  - name: Main", "    path: ./repo", "jobs:"]
    for i in range(200):
        lines += [
            f"  - name: Job {i:03d}",
            "    type: backup-job",
            "    repository: Main",
            f"    source: ./data/{i}",
        ]
    folder = work / "cold-start"
    folder.mkdir()
    (folder / "inventory.yaml").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BCS_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmdlet = [str(BIN / "Get-BackupJob")]
    run_quiet(cmdlet, folder, env)  # first run parses the YAML and fills the cache
    bare = median_seconds(lambda: run_quiet([sys.executable, "-c", "pass"], folder, env), repeat)
    cold = median_seconds(lambda: run_quiet(cmdlet, folder, env), repeat)
    first = median_seconds(
        lambda: (shutil.rmtree(folder / ".bcs"), run_quiet(cmdlet, folder, env)),
        max(repeat // 4, 3),
    )
    print_table(
        f"Cold start (median of {repeat} runs; target: Get-BackupJob at most 130 ms)",
        ["command", "median ms", "ratio to python -c pass"],
        [
            ["python -c pass", f"{bare * 1000:.1f}", "1.00"],
            [
                "Get-BackupJob (200 jobs, cached inventory)",
                f"{cold * 1000:.1f}",
                f"{cold / bare:.2f}",
            ],
            [
                "Get-BackupJob (200 jobs, first run: YAML + schema)",
                f"{first * 1000:.1f}",
                f"{first / bare:.2f}",
            ],
        ],
    )


def bench_shell_startup(work: Path, repeat: int) -> None:
    try:
        from shell_startup import measure_shell_startup  # type: ignore[import-not-found]
    except ImportError:
        return
    seconds = measure_shell_startup()
    print_table(
        "Interactive shell start-up to first prompt (median of 5)",
        ["what", "median ms"],
        [["bcs (interactive) to first prompt", f"{seconds * 1000:.1f}"]],
    )


def bench_copy_chain(work: Path, repeat: int) -> None:
    from copy_bench import FULL_MIB, FULLS, HEADER, INCREMENT_MIB, INCREMENTS, bench_copy

    rows = bench_copy(work, max(3, repeat // 7))
    print_table(
        f"Copying a chain of {FULLS} x {FULL_MIB} MiB fulls + {INCREMENTS} x {INCREMENT_MIB} MiB "
        "increments to a folder on the same disk, until durable (targets: Start-BackupCopy "
        "<= 1.25x cp, <= 0.6x rsync, peak RSS < 80 MiB; Retry after 90% writes <= 15%)",
        HEADER,
        rows,
    )


def bench_smb_share(work: Path, repeat: int) -> None:
    from smb_bench import bench_smb

    bench_smb(work, max(3, repeat // 4))


SECTIONS: dict[str, Callable[[Path, int], None]] = {
    "cold-start": bench_cold_start,
    "copy": bench_copy_chain,
    "shell": bench_shell_startup,
    "smb": bench_smb_share,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sections", nargs="*", default=list(SECTIONS), help=", ".join(SECTIONS))
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "cmdlets")], check=True)
    print(f"bcs benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="bcs-bench-", dir=ROOT) as tmp:
        for name in args.sections:
            SECTIONS[name](Path(tmp), args.repeat)


if __name__ == "__main__":
    main()
