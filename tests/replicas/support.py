"""A PostgreSQL primary and a hot standby streaming from it, both the test's own (never the machine's shared server).

The primary is `tests.faults.otlp_support.OwnPostgres` (initdb into a temporary folder, a free loopback port) with
`wal_level=replica`, a `replicator` role and a pg_hba entry for its replication connections (password, not trust).
The standby is made from it with `pg_basebackup -R` (which writes `standby.signal` and `primary_conninfo`) and runs on
another free port. Both log every statement with its database name, so a test can see which server ran what.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg

from tests.faults.otlp_support import OwnPostgres, free_port

REPLICATOR_PASSWORD = "replicator-secret"
_SERVER_SETTINGS = """
# tests/replicas: a primary that a standby streams from
wal_level = replica
max_wal_senders = 5
hot_standby = on
timezone = 'UTC'
log_statement = 'all'
log_line_prefix = '%m [%p] db=%d '
"""


class StreamingReplica:
    """`primary` and `standby` servers; `standby_url`/`primary_url` name a database on each."""

    def __init__(self) -> None:
        self.primary = OwnPostgres()
        self.standby_data = self.primary.root / "standby"
        self.standby_log = self.primary.root / "standby.log"
        self.standby_port = free_port()
        with (self.primary.data / "postgresql.conf").open("a") as conf:
            conf.write(_SERVER_SETTINGS)
        hba = self.primary.data / "pg_hba.conf"
        # First match wins: the replication user must give its password even though initdb trusted loopback.
        hba.write_text(f"host replication replicator 127.0.0.1/32 scram-sha-256\n{hba.read_text()}")

    def start(self) -> None:
        self.primary.start()
        with self.primary.connect("postgres") as db:
            db.execute(f"CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '{REPLICATOR_PASSWORD}'")
        conninfo = (
            f"host=127.0.0.1 port={self.primary.port} user=replicator password={REPLICATOR_PASSWORD} "
            "application_name=steplens_standby"
        )
        self.primary._run(
            "pg_basebackup", "-d", conninfo, "-D", str(self.standby_data), "-R", "-X", "stream", "--no-sync",
            "-c", "fast", timeout=180,
        )  # fmt: skip
        options = f"-p {self.standby_port} -k {self.primary.root} -c listen_addresses=127.0.0.1"
        self.primary._run(
            "pg_ctl", "-D", str(self.standby_data), "-l", str(self.standby_log), "-o", options, "-w", "-t", "60",
            "start",
        )  # fmt: skip
        self.wait_streaming()

    def standby_connect(self, database: str) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.standby_port, user="postgres", dbname=database, autocommit=True
        )

    def primary_url(self, database: str) -> str:
        return self.primary.url(database)

    def standby_url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.standby_port}/{database}"

    def wait_streaming(self, timeout: float = 60) -> None:
        """Until the standby is in recovery, its WAL receiver streams and the primary lists it as streaming."""
        deadline = time.monotonic() + timeout
        while True:
            with self.standby_connect("postgres") as standby, self.primary.connect("postgres") as primary:
                in_recovery = standby.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                receiver = standby.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
                sender = primary.execute(
                    "SELECT state FROM pg_stat_replication WHERE application_name = 'steplens_standby'"
                ).fetchone()
            if in_recovery and receiver == ("streaming",) and sender == ("streaming",):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"standby not streaming: recovery={in_recovery} receiver={receiver} sender={sender}\n"
                    f"{self.standby_log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.2)

    def stop_standby(self) -> None:
        self.primary._run("pg_ctl", "-D", str(self.standby_data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with suppress(subprocess.SubprocessError, OSError):
            self.stop_standby()
        self.primary.destroy()


@contextmanager
def streaming_replica() -> Iterator[StreamingReplica]:
    servers = StreamingReplica()
    try:
        servers.start()
        yield servers
    finally:
        servers.destroy()


def caught_up(primary: psycopg.Connection, standby: psycopg.Connection, timeout: float = 30) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    while not standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()[0]:
        assert time.monotonic() < deadline, f"the standby did not replay up to {lsn} in {timeout} s"
        time.sleep(0.05)
