"""Test launcher: ``python tests/stream/kill_after_commit.py N stream [OPTIONS]`` runs
``headwater stream [OPTIONS]`` in this process and SIGKILLs it right after the stream's
N-th Delta sink commit, so that it dies *between* the commits of one batch (through the
:attr:`BronzeStream.on_commit` test hook; production code has no fault injection)."""

import os
import signal
import sys

from headwater.cli.main import cli
from headwater.stream.processor import BronzeStream


def main() -> None:
    kill_at = int(sys.argv[1])

    def on_commit(commits: int) -> None:
        if commits == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    BronzeStream.on_commit = staticmethod(on_commit)
    cli.main(sys.argv[2:], prog_name="headwater")


if __name__ == "__main__":
    main()
