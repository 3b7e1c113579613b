"""The per-patient privacy budget ledger, shared by the hospitals.

Every DP run appends, per patient pseudonym (see ``pseudonym.py``), the RDP
curve of the privacy loss it spent at each site, as it spends it (after each
local training), so a run that crashes mid-way has recorded what it spent.
Composition: a patient's total loss is the sum of all their RDP curves (over
runs, sites and mechanisms, order by order, on one grid of orders), converted
once to (ε, δ) with Opacus' conversion. This is tighter than adding the ε of
each run, and it is valid for adaptive composition across sites and runs.

Storage: SQLite (stdlib ``sqlite3``) behind a URL ``sqlite:///abs/path.db``
whose path is absolute as written (``sqlite:////abs/path.db`` names the same
file), so a command names the same ledger from any working directory; the
default is ``ledger.db`` in the per-user data folder (:func:`default_url`).
Charges are never deleted, each is written in one transaction, the database
in WAL mode with a busy timeout, owner-only (0600), so concurrent runs
(processes) neither corrupt nor lose each other's charges. Another URL scheme
would be a server database with the same tables.

Exactly once: a charge carries its run's id (kept across a resume by the
checkpoint) and its sequence number at its site, and a second charge with
the same (run, site, patient, sequence) updates that row to the larger of
the two curves instead of adding a row. A resumed run repeats
the charges of the round it was killed in with the numbers they had, so a
kill at any point neither loses a charge (each is written as it is spent)
nor doubles one.

Holds: a starting run checks its plan against the budget and records it as a
hold in one transaction (``reserve``), so two runs starting together cannot
both pass on the same remaining budget. A hold counts for what its run has
not yet charged, and is dropped when the run ends (``release``). A process
killed outright leaves its hold: the next attempt of the same run drops it,
and ``privmed budget --release RUN`` drops it by hand.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from privmed.errors import PrivmedError
from privmed.files import create_private, data_home, private_dir
from privmed.privacy.accounting import ORDERS, epsilon_from_rdp

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, site TEXT NOT NULL,
    patient TEXT NOT NULL, unit TEXT NOT NULL, rdp TEXT NOT NULL, at REAL NOT NULL, seq INTEGER);
CREATE INDEX IF NOT EXISTS charges_patient ON charges (patient);
CREATE TABLE IF NOT EXISTS holds (
    run TEXT NOT NULL, run_id TEXT NOT NULL, patient TEXT NOT NULL, rdp TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS holds_run ON holds (run);
"""


# a charge is recorded once: a resumed run repeats its interrupted round's charges with the same numbers
ONCE = "CREATE UNIQUE INDEX IF NOT EXISTS charges_once ON charges (run_id, site, patient, seq)"


def default_url() -> str:
    """The per-user default ledger: ``ledger.db`` in privmed's data folder (absolute)."""
    return f"sqlite://{data_home() / 'ledger.db'}"


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///abs/path.db`` URL names: the URL's path, absolute as written."""
    if not url.startswith("sqlite:///"):
        raise PrivmedError(
            f"unsupported ledger URL {url!r}; use sqlite:///<absolute path>, e.g. {default_url()} (the default)"
        )
    path = Path("/" + url[len("sqlite:///") :].lstrip("/"))
    old = Path(url[len("sqlite:///") :])  # how privmed read it before: relative to the working directory
    if not path.exists() and not old.is_absolute() and old.is_file():
        raise PrivmedError(
            f"ledger URL {url} names {path}, which does not exist, but a ledger was kept at {old.absolute()} "
            f"(older privmed read the URL from the working directory): give ledger=sqlite://{old.absolute()}"
        )
    return path


class Ledger:
    """Append-only per-patient RDP charges in one SQLite database."""

    def __init__(self, url: str) -> None:
        self.url, self.path = url, sqlite_path(url)
        private_dir(self.path.parent)
        create_private(self.path)  # sqlite3 would create it with the umask's mode (0644); its WAL files follow it
        con = self._connect()
        try:
            con.executescript(SCHEMA)
            if "seq" not in {row[1] for row in con.execute("PRAGMA table_info(charges)")}:  # a ledger made before
                con.execute("ALTER TABLE charges ADD COLUMN seq INTEGER")
            con.execute(ONCE)
            row = con.execute("SELECT value FROM meta WHERE key = 'orders'").fetchone()
            if row is None:
                con.execute("INSERT OR IGNORE INTO meta VALUES ('orders', ?)", (json.dumps(list(ORDERS)),))
            elif json.loads(row[0]) != list(ORDERS):
                raise PrivmedError(
                    f"ledger {url} was written with other RDP orders (another Opacus version?); use a new ledger"
                )
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def charge(
        self, *, run_id: str, site: str, unit: str, rdp_by_patient: dict[str, np.ndarray], seq: int | None = None
    ) -> None:
        """Record one site's spend for these patients, atomically.

        The ``seq``-th charge of ``run_id`` at ``site`` is recorded once: made
        again (a resumed run repeating its interrupted round), the row keeps
        the larger curve, order by order (a charge cut short by the kill
        counted fewer steps). ``seq`` None: always a new row.
        """
        now = time.time()
        spend = {p: np.asarray(r, dtype=float) for p, r in rdp_by_patient.items() if np.any(r)}
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            before = {
                p: np.asarray(json.loads(r))
                for p, r in con.execute(
                    "SELECT patient, rdp FROM charges WHERE run_id = ? AND site = ? AND seq = ?", (run_id, site, seq)
                )
            }
            for p, r in spend.items():
                if p in before:
                    con.execute(
                        "UPDATE charges SET rdp = ? WHERE run_id = ? AND site = ? AND seq = ? AND patient = ?",
                        (json.dumps([float(x) for x in np.maximum(before[p], r)]), run_id, site, seq, p),
                    )
                else:
                    con.execute(
                        "INSERT INTO charges (run_id, site, patient, unit, rdp, at, seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (run_id, site, p, unit, json.dumps([float(x) for x in r]), now, seq),
                    )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:  # BEGIN itself may have failed (database locked past the timeout)
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def reserve(self, *, run: str, run_id: str, plan: dict[str, np.ndarray], limit: float | None, delta: float) -> None:
        """Hold ``plan`` (pseudonym -> RDP the whole run spends); refuse the run if a patient would pass ``limit``.

        Other runs' charges + their holds not yet charged + the larger of this
        plan and what ``run_id`` has already charged (a resumed run keeps its
        id) is checked and the hold written in one ``BEGIN IMMEDIATE``
        transaction. Holds of an earlier attempt of ``run`` are dropped first.
        """
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM holds WHERE run = ?", (run,))
            if limit is not None:
                committed, holders = self._committed(con, run_id=run_id, plan=plan)
                after = {p: epsilon_from_rdp(committed[p], delta=delta) for p in plan}
                over = {p: e - limit for p, e in after.items() if e > limit}
                if over:
                    worst = max(over.values())
                    running = (
                        f"; {holders} running run(s) hold part of it (privmed budget lists them)" if holders else ""
                    )
                    raise PrivmedError(
                        f"refused before training: {len(over)} of {len(plan)} patients would exceed the privacy budget "
                        f"ε={limit:g} (δ={delta:g}), by up to {worst:.3g} (worst would reach "
                        f"ε={limit + worst:.3g}){running}; "
                        "lower the rounds/epochs, raise the noise, or leave those patients out"
                    )
            now = time.time()
            con.executemany(
                "INSERT INTO holds (run, run_id, patient, rdp, at) VALUES (?, ?, ?, ?, ?)",
                [(run, run_id, p, json.dumps([float(x) for x in r]), now) for p, r in plan.items() if np.any(r)],
            )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def release(self, *, run_id: str | None = None, run: str | None = None) -> int:
        """Drop the holds of one process (``run_id``) or of every attempt of ``run``; return how many rows went."""
        con = self._connect()
        try:
            column, value = ("run_id", run_id) if run_id is not None else ("run", run)
            return con.execute(f"DELETE FROM holds WHERE {column} = ?", (value,)).rowcount
        finally:
            con.close()

    def holds(self) -> dict[str, dict]:
        """Runs holding budget: run -> {patients, since (unix time)}."""
        con = self._connect()
        try:
            rows = con.execute("SELECT run, COUNT(DISTINCT patient), MIN(at) FROM holds GROUP BY run").fetchall()
        finally:
            con.close()
        return {run: {"patients": n, "since": at} for run, n, at in rows}

    @staticmethod
    def _committed(
        con: sqlite3.Connection, *, run_id: str, plan: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], int]:
        """Per patient: all charges plus what the holds, and ``plan`` reserved for ``run_id``, have not yet charged;
        and how many other runs hold."""
        out: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(ORDERS)))
        by_run: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(len(ORDERS)))
        for charger, p, r in con.execute("SELECT run_id, patient, rdp FROM charges"):
            v = np.asarray(json.loads(r))
            out[p] = out[p] + v
            by_run[charger, p] = by_run[charger, p] + v
        holders = set()
        for holder, p, r in con.execute("SELECT run_id, patient, rdp FROM holds"):
            out[p] = out[p] + np.maximum(np.asarray(json.loads(r)) - by_run[holder, p], 0)
            holders.add(holder)
        for p, r in plan.items():  # a resumed run (same id) has charged part of its plan already
            out[p] = out[p] + np.maximum(r - by_run[run_id, p], 0)
        return dict(out), len(holders)

    def spent_rdp(self, patients: list[str] | None = None) -> dict[str, np.ndarray]:
        """Summed RDP curve per patient (all runs), for ``patients`` or everyone."""
        con = self._connect()
        try:
            out: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(ORDERS)))
            rows = con.execute("SELECT patient, rdp FROM charges").fetchall()
        finally:
            con.close()
        wanted = None if patients is None else set(patients)
        for p, r in rows:
            if wanted is None or p in wanted:
                out[p] = out[p] + np.asarray(json.loads(r))
        return dict(out)

    def runs(self) -> dict[str, int]:
        con = self._connect()
        try:
            return dict(con.execute("SELECT run_id, COUNT(*) FROM charges GROUP BY run_id").fetchall())
        finally:
            con.close()

    def summary(self, *, delta: float, limit: float | None) -> list[dict]:
        """Per patient: ε spent (composed), what is left under ``limit``, and how many runs charged them."""
        con = self._connect()
        try:
            counts = dict(
                con.execute("SELECT patient, COUNT(DISTINCT run_id) FROM charges GROUP BY patient").fetchall()
            )
            sites = dict(con.execute("SELECT patient, COUNT(DISTINCT site) FROM charges GROUP BY patient").fetchall())
        finally:
            con.close()
        rows = []
        for p, rdp in sorted(self.spent_rdp().items()):
            eps = epsilon_from_rdp(rdp, delta=delta)
            rows.append(
                {
                    "patient": p,
                    "epsilon": eps,
                    "remaining": None if limit is None else limit - eps,
                    "runs": counts.get(p, 0),
                    "sites": sites.get(p, 0),
                }
            )
        return rows


def budget_report(url: str, *, limit: float | None, delta: float = 1e-5) -> dict:
    """What ``privmed budget`` shows: per patient and in total, spent and left under ``limit``."""
    path = sqlite_path(url)
    if not path.is_file():
        raise PrivmedError(f"no ledger at {path}; DP runs create it when given ledger={url}")
    ledger = Ledger(url)
    rows = sorted(ledger.summary(delta=delta, limit=limit), key=lambda r: -r["epsilon"])
    eps = [r["epsilon"] for r in rows]
    total = {
        "patients": len(rows),
        "runs": len(ledger.runs()),
        "epsilon_max": max(eps, default=0.0),
        "epsilon_mean": float(np.mean(eps)) if eps else 0.0,
        "delta": delta,
        "limit": limit,
        "patients_over_limit": None if limit is None else sum(e > limit for e in eps),
        "remaining_min": None if limit is None else limit - max(eps, default=0.0),
    }
    return {"total": total, "patients": rows, "holds": ledger.holds()}
