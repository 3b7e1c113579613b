"""The per-patient budget ledger: keyed pseudonyms, composition across sites and runs, refusal, crashes, concurrency."""

import multiprocessing as mp
import sqlite3

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from privmed.cli import app
from privmed.config import RunConfig
from privmed.engine.session import plan_of
from privmed.errors import PrivmedError
from privmed.models import build_model
from privmed.privacy.accounting import ORDERS, epsilon_from_rdp
from privmed.privacy.ledger import Ledger, budget_report
from privmed.privacy.pseudonym import load_key, new_key, pseudonym
from privmed.privacy.registry import make_mechanism
from privmed.protocols.base import TrainSettings
from privmed.run import execute

TRAIN = TrainSettings(rounds=1, batch_size=4)


@pytest.fixture
def ledger_opts(tmp_path):
    key = new_key(tmp_path / "key.bin")
    return {"ledger": f"sqlite:///{tmp_path / 'ledger.db'}", "ledger_key": str(key)}


def p3(opts, **extra):
    return RunConfig(
        protocol="fedavg",
        train=TRAIN,
        privacy={"mechanism": "p3sgd", "noise_multiplier": 1.5, "delta": 1e-3, **opts, **extra},
    )


def test_shared_patient_is_one_ledger_entry_charged_by_both_sites(toy_fed, ledger_opts):
    execute(p3(ledger_opts), fed=toy_fed)
    key = load_key(ledger_opts["ledger_key"])
    spent = Ledger(ledger_opts["ledger"]).spent_rdp()
    shared, alone = pseudonym(key, "SHARED-0"), pseudonym(key, "P2-train-1")
    assert set(spent) == {pseudonym(key, p) for s in toy_fed.sites for p in s.train.patient_ids}
    # composed by summing RDP: the shared patient spent exactly twice a one-site patient's curve
    assert np.allclose(spent[shared], 2 * spent[alone])
    assert epsilon_from_rdp(spent[shared], delta=1e-5) < 2 * epsilon_from_rdp(spent[alone], delta=1e-5)
    raw = sqlite3.connect(ledger_opts["ledger"][len("sqlite:///") :]).execute("SELECT patient FROM charges").fetchall()
    assert not any(r[0].startswith(("P", "SHARED")) for r in raw)  # only pseudonyms are stored


def test_over_budget_run_refused_before_training_and_records_nothing(toy_fed, ledger_opts):
    execute(p3(ledger_opts), fed=toy_fed)
    ledger = Ledger(ledger_opts["ledger"])
    before = sum(ledger.runs().values())
    worst = max(ledger.spent_rdp().values(), key=lambda r: epsilon_from_rdp(r, delta=1e-5))
    eps_now, eps_twice = epsilon_from_rdp(worst, delta=1e-5), epsilon_from_rdp(2 * worst, delta=1e-5)
    cfg = p3(ledger_opts, budget=(eps_now + eps_twice) / 2)  # a second identical run would push the most-charged over
    mech = make_mechanism(cfg.privacy)
    with pytest.raises(PrivmedError, match=r"refused before training: \d+ of \d+ patients would exceed .* by up to"):
        mech.check(plan_of(cfg, toy_fed))
    assert sum(ledger.runs().values()) == before
    # a budget high enough lets it run
    execute(p3(ledger_opts, budget=eps_twice * 1.01), fed=toy_fed)
    assert len(ledger.runs()) == 2


def test_missing_key_is_a_clear_error(toy_fed, tmp_path):
    cfg = p3({"ledger": f"sqlite:///{tmp_path / 'l.db'}", "ledger_key": str(tmp_path / "nope.bin")})
    with pytest.raises(PrivmedError, match="key file .* not found"):
        make_mechanism(cfg.privacy).check(plan_of(cfg, toy_fed))
    assert not (tmp_path / "l.db").exists()


class CrashAfter(torch.nn.Module):
    """A CNN that raises on its third forward pass (a site crashing mid-training)."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = build_model("cnn", in_channels=1, n_classes=2, seed=0), 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("site crashed")
        return self.net(x)


def test_crashed_training_records_what_it_spent(toy_fed, ledger_opts):
    cfg = RunConfig(
        protocol="fedavg",
        train=TRAIN,
        privacy={"mechanism": "dp-sgd", "noise_multiplier": 1.5, "delta": 1e-3, **ledger_opts},
    )
    mech = make_mechanism(cfg.privacy)
    mech.check(plan_of(cfg, toy_fed))
    site = toy_fed.sites[2].train  # no shared patient here
    with pytest.raises(RuntimeError, match="crashed"):
        mech.trainer(2)(CrashAfter(), site, task="classification", epochs=5, batch_size=4, lr=1e-3, seed=0)
    spent = Ledger(ledger_opts["ledger"]).spent_rdp()
    key = load_key(ledger_opts["ledger_key"])
    # two completed steps; patients with two images are charged the unamplified group bound
    from privmed.privacy.accounting import rdp_group_gaussian

    assert np.allclose(
        spent[pseudonym(key, site.patient_ids[0])], rdp_group_gaussian(group_size=2, noise_multiplier=1.5, steps=2)
    )


def _charge_many(url, worker, n):
    ledger = Ledger(url)
    for i in range(n):
        ledger.charge(
            run_id=f"run-{worker}", site="s", unit="patient", rdp_by_patient={f"p{i % 5}": np.full(len(ORDERS), 0.01)}
        )


def test_two_processes_do_not_corrupt_or_lose_charges(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url)
    ctx = mp.get_context("fork")  # two OS processes, each with its own connection
    procs = [ctx.Process(target=_charge_many, args=(url, w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    ledger = Ledger(url)
    assert ledger.runs() == {"run-0": 40, "run-1": 40}
    assert all(np.allclose(r, 16 * 0.01) for r in ledger.spent_rdp().values())
    assert sqlite3.connect(tmp_path / "ledger.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_budget_cli_shows_spent_and_left(toy_fed, ledger_opts):
    execute(p3(ledger_opts), fed=toy_fed)
    rep = budget_report(ledger_opts["ledger"], limit=100.0)
    assert rep["total"]["patients"] == len({p for s in toy_fed.sites for p in s.train.patient_ids})
    assert rep["patients"][0]["remaining"] == pytest.approx(100.0 - rep["total"]["epsilon_max"])
    res = CliRunner().invoke(app, ["budget", "--ledger", ledger_opts["ledger"], "--limit", "100"])
    assert res.exit_code == 0 and "0 over" in res.output
    res = CliRunner().invoke(app, ["budget", "--ledger", "sqlite:///does/not/exist.db"])
    assert res.exit_code == 2
    assert len(ORDERS) == len(next(iter(Ledger(ledger_opts["ledger"]).spent_rdp().values())))
    assert budget_report(ledger_opts["ledger"], limit=None)["holds"] == {}  # the finished run dropped its hold


PLAN = {f"p{i}": np.full(len(ORDERS), 0.5) for i in range(3)}
LIMIT = epsilon_from_rdp(np.full(len(ORDERS), 1.5), delta=1e-5)  # the ε of an RDP curve of 1.5 at every order


def _reserve_together(url, name, barrier, results):
    barrier.wait()
    try:
        Ledger(url).reserve(
            run=name, run_id=f"{name}@1", plan={p: 2 * r for p, r in PLAN.items()}, limit=LIMIT, delta=1e-5
        )
        results.put((name, "held"))
    except PrivmedError as exc:
        results.put((name, str(exc)))


def test_two_runs_starting_together_cannot_both_spend_the_same_budget(tmp_path):
    # each plan (1.0 per order) fits under the limit alone (1.5); both together would not
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url)
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_reserve_together, args=(url, name, barrier, results)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcome = dict(results.get(timeout=5) for _ in procs)
    assert sorted(v == "held" for v in outcome.values()) == [False, True], outcome
    refused = next(v for v in outcome.values() if v != "held")
    assert "3 of 3 patients would exceed" in refused and "1 running run(s) hold part of it" in refused
    assert set(Ledger(url).holds()) == {k for k, v in outcome.items() if v == "held"}


def test_a_hold_counts_only_what_its_run_has_not_yet_charged(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.reserve(run="a", run_id="a@1", plan=PLAN, limit=None, delta=1e-5)
    with pytest.raises(PrivmedError, match="running run"):  # a holds 0.5 per order: 0.5 + 1.5 > 1.5
        ledger.reserve(run="b", run_id="b@1", plan={p: 3 * r for p, r in PLAN.items()}, limit=LIMIT, delta=1e-5)
    ledger.charge(
        run_id="a@1", site="s", unit="patient", rdp_by_patient=PLAN
    )  # a spends its plan: charged, not held twice
    ledger.reserve(run="b", run_id="b@1", plan=PLAN, limit=LIMIT, delta=1e-5)  # 0.5 charged + 0.5 + 0.5 held = 1.5
    assert set(ledger.holds()) == {"a", "b"}
    assert ledger.release(run_id="a@1") == 3 and set(ledger.holds()) == {"b"}


def test_a_killed_runs_hold_is_dropped_by_its_next_attempt_or_by_hand(toy_fed, ledger_opts):
    cfg = p3(ledger_opts, budget=100.0)
    make_mechanism(cfg.privacy).check(plan_of(cfg, toy_fed))  # the process "dies": check() held, close() never came
    ledger = Ledger(ledger_opts["ledger"])
    assert set(ledger.holds()) == {cfg.run_name}
    res = CliRunner().invoke(app, ["budget", "--ledger", ledger_opts["ledger"]])
    assert res.exit_code == 0 and f"hold: run '{cfg.run_name}'" in res.output
    again = make_mechanism(cfg.privacy)
    again.check(plan_of(cfg, toy_fed))  # the next attempt replaces the stale hold instead of adding to it
    assert (
        len(
            {
                r
                for (r,) in sqlite3.connect(ledger_opts["ledger"][len("sqlite:///") :]).execute(
                    "SELECT run_id FROM holds"
                )
            }
        )
        == 1
    )
    res = CliRunner().invoke(app, ["budget", "--ledger", ledger_opts["ledger"], "--release", "nope"])
    assert res.exit_code == 2 and cfg.run_name in res.output
    res = CliRunner().invoke(app, ["budget", "--ledger", ledger_opts["ledger"], "--release", cfg.run_name])
    assert res.exit_code == 0 and ledger.holds() == {}


# ------------------------------------------------------------------------ one ledger, located absolutely (issue 19)


def test_a_ledger_url_names_the_same_file_from_any_working_directory(tmp_path, monkeypatch):
    """``sqlite:///abs/path.db`` was read from the working directory: run from / it opened a fresh, empty ledger."""
    url = f"sqlite://{tmp_path / 'hospital' / 'ledger.db'}"  # sqlite:///tmp/...: three slashes, an absolute path
    assert url.startswith("sqlite:///") and not url.startswith("sqlite:////")
    paths = set()
    for cwd in (tmp_path, tmp_path / "hospital", "/"):
        monkeypatch.chdir(tmp_path)
        Ledger(url)  # makes the folder
        monkeypatch.chdir(cwd)
        paths.add(Ledger(url).path)
    assert paths == {tmp_path / "hospital" / "ledger.db"}
    assert Ledger(f"sqlite:///{tmp_path / 'hospital' / 'ledger.db'}").path == tmp_path / "hospital" / "ledger.db"
    assert not (tmp_path / "tmp").exists()  # nothing made relative to a working directory


def test_a_ledger_kept_where_older_privmed_put_it_is_not_silently_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "ledger.db").write_bytes(b"")
    with pytest.raises(PrivmedError, match=f"a ledger was kept at {tmp_path / 'runs' / 'ledger.db'}"):
        Ledger("sqlite:///runs/ledger.db")


def test_the_default_ledger_is_per_user_and_a_run_records_the_ledger_it_charged(toy_fed, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVMED_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    key = new_key(tmp_path / "key.bin")
    result = execute(p3({"ledger_key": str(key)}, budget=100.0), fed=toy_fed)
    ledger = tmp_path / "home" / "ledger.db"
    assert result.privacy["ledger"]["path"] == str(ledger)
    assert result.privacy["ledger"]["url"] == f"sqlite://{ledger}"
    charged = Ledger(f"sqlite://{ledger}").runs()  # run id -> charges: this run, under the id its result names
    assert list(charged) == [result.privacy["ledger"]["run_id"]] and charged[result.privacy["ledger"]["run_id"]] > 0
    res = CliRunner().invoke(app, ["budget"])  # privmed budget reads the same default
    assert res.exit_code == 0 and f"{len(Ledger(f'sqlite://{ledger}').spent_rdp())} patients" in res.output


def test_the_ledger_and_its_folder_are_owner_only(tmp_path):
    Ledger(f"sqlite://{tmp_path / 'new' / 'ledger.db'}").charge(
        run_id="r", site="s", unit="patient", rdp_by_patient={"p": np.full(len(ORDERS), 0.1)}
    )
    assert (tmp_path / "new" / "ledger.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    for f in (tmp_path / "new").iterdir():  # the WAL files too
        assert f.stat().st_mode & 0o077 == 0, f


def test_a_pseudonym_key_others_can_read_is_refused_as_the_aes_key_is(tmp_path):
    from privmed.privacy.aes_keys import load_key as load_aes_key

    pkey, akey = tmp_path / "pseudonym.key", tmp_path / "aes.key"
    pkey.write_bytes(b"k" * 32)
    akey.write_text("ab" * 32)
    for path, load in ((pkey, load_key), (akey, load_aes_key)):
        path.chmod(0o644)
        with pytest.raises(PrivmedError, match=r"is accessible by group or others \(mode 644\); run: chmod 600"):
            load(path)
        path.chmod(0o600)
        assert load(path)
    made = new_key(tmp_path / "made" / "hospitals.key")
    assert made.stat().st_mode & 0o777 == 0o600 and made.parent.stat().st_mode & 0o777 == 0o700


class Killed(BaseException):
    """kill -9 at a chosen step: nothing after it runs (not even the ledger's release of the hold)."""


def _kill_at(monkeypatch, step: int) -> list[str]:
    """Count the steps that touch durable state — each ledger charge, each checkpoint — and die after the ``step``-th
    charge or before the ``step``-th checkpoint."""
    from privmed.engine.checkpoint import Checkpoint

    seen: list[str] = []
    charge, save = Ledger.charge, Checkpoint.save

    def charging(self, **kw):
        charge(self, **kw)
        seen.append("charge")
        if len(seen) == step:
            raise Killed

    def saving(self, *a, **kw):
        seen.append("checkpoint")
        if len(seen) == step:
            raise Killed
        save(self, *a, **kw)

    monkeypatch.setattr(Ledger, "charge", charging)
    monkeypatch.setattr(Checkpoint, "save", saving)
    return seen


# the steps: checkpoint 0, round 1's three charges, checkpoint 1, round 2's three charges, checkpoint 2
@pytest.mark.parametrize("step", range(1, 10))
def test_a_kill_at_any_step_then_resume_charges_the_ledger_exactly_as_an_uninterrupted_run(
    toy_fed, tmp_path, monkeypatch, step
):
    """A kill mid-round used to double-charge on resume (ledger ε max 3.224 vs 2.994 in result.json)."""
    key = str(new_key(tmp_path / "key.bin"))

    def config(ledger):
        opts = {"ledger": f"sqlite://{tmp_path / ledger}", "ledger_key": key, "budget": 100.0}
        return RunConfig(
            protocol="cwt",
            train=TrainSettings(rounds=2, batch_size=4),
            privacy={"mechanism": "p3sgd", "noise_multiplier": 1.5, "delta": 1e-3, **opts},
        )

    whole = execute(config("whole.db"), fed=toy_fed, checkpoint_dir=tmp_path / "whole")
    seen = _kill_at(monkeypatch, step)
    with pytest.raises(Killed):
        execute(config("killed.db"), fed=toy_fed, checkpoint_dir=tmp_path / "killed")
    assert seen[-1] in ("charge", "checkpoint") and len(seen) == step
    monkeypatch.undo()
    again = (tmp_path / "killed" / "checkpoint.pt").exists()  # killed before round 0's checkpoint: nothing to resume
    assert again or step == 1
    resumed = execute(config("killed.db"), fed=toy_fed, checkpoint_dir=tmp_path / "killed", resume=again)
    a, b = Ledger(f"sqlite://{tmp_path / 'whole.db'}"), Ledger(f"sqlite://{tmp_path / 'killed.db'}")
    assert sum(b.runs().values()) == sum(a.runs().values())  # not one charge row more or less
    spent_a, spent_b = a.spent_rdp(), b.spent_rdp()
    assert spent_a.keys() == spent_b.keys()
    assert all(np.allclose(spent_a[p], spent_b[p]) for p in spent_a)
    eps = max(epsilon_from_rdp(r, delta=1e-5) for r in spent_b.values())
    assert (
        eps
        == pytest.approx(resumed.privacy["patient_epsilon_max"])
        == pytest.approx(whole.privacy["patient_epsilon_max"])
    )


def test_a_ledger_whose_folder_cannot_be_made_is_a_one_line_error(tmp_path):
    """A FileExistsError here once printed the hospitals' HMAC key among a traceback's local variables."""
    (tmp_path / "file").write_text("not a folder")
    for url in (f"sqlite://{tmp_path / 'file' / 'ledger.db'}", f"sqlite://{tmp_path / 'file' / 'sub' / 'ledger.db'}"):
        with pytest.raises(PrivmedError, match="folder"):
            Ledger(url)
