"""Test launcher: ``python tests/faults/kill_import.py N import [OPTIONS]`` runs ``headwater
import [OPTIONS]`` in this process and SIGKILLs it right after the bulk import's N-th Delta
commit, so that it dies between two commits (those of one chunk, or of two), through the
:data:`headwater.sources.bulk.on_commit` test hook; production code has no fault injection."""

import os
import signal
import sys

from headwater.cli.main import cli
from headwater.sources import bulk


def main() -> None:
    kill_at = int(sys.argv[1])

    def on_commit(commits: int) -> None:
        if commits == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    bulk.on_commit = on_commit
    cli.main(sys.argv[2:], prog_name="headwater")


if __name__ == "__main__":
    main()
