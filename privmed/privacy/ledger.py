"""The per-patient privacy budget ledger, shared by the hospitals.

Every DP run appends, per patient pseudonym (see ``pseudonym.py``), the RDP
curve of the privacy loss it spent at each site, as it spends it (after each
local training), so a run that crashes mid-way has recorded what it spent.
Composition: a patient's total loss is the sum of all their RDP curves (over
runs, sites and mechanisms, order by order, on one grid of orders), converted
once to (ε, δ) with Opacus' conversion. This is tighter than adding the ε of
each run, and it is valid for adaptive composition across sites and runs.

Storage: SQLite (stdlib ``sqlite3``) behind a URL ``sqlite:///path``; rows
are only ever inserted, each charge in one transaction, the database in WAL
mode with a busy timeout, so concurrent runs (processes) neither corrupt nor
lose each other's charges. Another URL scheme would be a server database
with the same two tables.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from privmed.errors import PrivmedError
from privmed.privacy.accounting import ORDERS, epsilon_from_rdp

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, site TEXT NOT NULL,
    patient TEXT NOT NULL, unit TEXT NOT NULL, rdp TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS charges_patient ON charges (patient);
"""


def sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise PrivmedError(f"unsupported ledger URL {url!r}; use sqlite:///<path> (e.g. sqlite:///runs/ledger.db)")
    return Path(url[len("sqlite:///"):])


class Ledger:
    """Append-only per-patient RDP charges in one SQLite database."""

    def __init__(self, url: str) -> None:
        self.url, self.path = url, sqlite_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect()
        try:
            con.executescript(SCHEMA)
            row = con.execute("SELECT value FROM meta WHERE key = 'orders'").fetchone()
            if row is None:
                con.execute("INSERT OR IGNORE INTO meta VALUES ('orders', ?)", (json.dumps(list(ORDERS)),))
            elif json.loads(row[0]) != list(ORDERS):
                raise PrivmedError(f"ledger {url} was written with other RDP orders (another Opacus version?); use a new ledger")
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def charge(self, *, run_id: str, site: str, unit: str, rdp_by_patient: dict[str, np.ndarray]) -> None:
        """Record one site's spend for these patients, atomically."""
        now = time.time()
        rows = [(run_id, site, p, unit, json.dumps([float(x) for x in r]), now) for p, r in rdp_by_patient.items() if np.any(r)]
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO charges (run_id, site, patient, unit, rdp, at) VALUES (?, ?, ?, ?, ?, ?)", rows)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:  # BEGIN itself may have failed (database locked past the timeout)
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

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
            counts = dict(con.execute("SELECT patient, COUNT(DISTINCT run_id) FROM charges GROUP BY patient").fetchall())
            sites = dict(con.execute("SELECT patient, COUNT(DISTINCT site) FROM charges GROUP BY patient").fetchall())
        finally:
            con.close()
        rows = []
        for p, rdp in sorted(self.spent_rdp().items()):
            eps = epsilon_from_rdp(rdp, delta=delta)
            rows.append({"patient": p, "epsilon": eps, "remaining": None if limit is None else limit - eps,
                         "runs": counts.get(p, 0), "sites": sites.get(p, 0)})
        return rows


def budget_report(url: str, *, limit: float | None, delta: float = 1e-5) -> dict:
    """What ``privmed budget`` shows: per patient and in total, spent and left under ``limit``."""
    path = sqlite_path(url)
    if not path.is_file():
        raise PrivmedError(f"no ledger at {path}; DP runs create it when given ledger={url}")
    ledger = Ledger(url)
    rows = sorted(ledger.summary(delta=delta, limit=limit), key=lambda r: -r["epsilon"])
    eps = [r["epsilon"] for r in rows]
    total = {"patients": len(rows), "runs": len(ledger.runs()), "epsilon_max": max(eps, default=0.0),
             "epsilon_mean": float(np.mean(eps)) if eps else 0.0, "delta": delta, "limit": limit,
             "patients_over_limit": None if limit is None else sum(e > limit for e in eps),
             "remaining_min": None if limit is None else limit - max(eps, default=0.0)}
    return {"total": total, "patients": rows}
