"""The state directory: every piece of shared state goes through here.

Records are JSON documents written atomically (temp file, fsync, rename, fsync of the
directory), mode 0600 in 0700 directories, each carrying ``FormatVersion``. Every
read-modify-write happens under an ``fcntl.flock`` lock on a separate lock file, which the
kernel releases when the holding process dies, so there are no stale locks.
"""

from cmdlets.store.records import (
    FORMAT_VERSION,
    Lock,
    StateDir,
    read_json,
    write_json_atomic,
)

__all__ = ["FORMAT_VERSION", "Lock", "StateDir", "read_json", "write_json_atomic"]
