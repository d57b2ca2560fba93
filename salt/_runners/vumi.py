"""
The fleet, from the master: a deploy that keeps all or none, and a view of it.

.. code-block:: bash

    salt-run saltutil.sync_all                # once, and after each upgrade of the bundle
    salt-run vumi.deploy staging 'web*'       # what vumi.orch.deploy runs
    salt-run vumi.status 'web*'
    salt-run vumi.status 'G@role:web' tgt_type=compound --out=json

``vumi.deploy`` resolves one commit and one release name for every host, then:

1. **prepare** on every host (health-checked; the host is held for this run:
   any other deploy of the environment is refused until the end);
2. with ``canary``, **publish** and **restart** on the first hosts only, then
   **canary**: they are watched for ``canary_wait`` seconds;
3. **publish** on every (other) host, only if every host prepared;
4. **restart** the webapps, host by host batch (``batch``), each port once the
   previous one answers again.

A failure anywhere leaves the fleet on the old release, serving: after prepare,
the new release is discarded everywhere; after publish or a restart, every host
that switched switches back, and every host that restarted restarts back.

Every phase waits at most ``timeout`` seconds (default 120) for every host: one
that has not answered by then fails the run, named, and is asked nothing more.
The run's heartbeat (every 10 s, ``vumi.renew``) keeps its hosts held; a run that
dies stops beating and its holds lapse ``hold`` seconds later (default 90), or at
once with ``salt-run vumi.recover``, which also brings a fleet the dead run split
back onto one release. Each phase fires ``vumi/fleet/<env>/<phase>`` on the
master's event bus. ``salt-run`` exits 0 on success, 1 when the run failed and
the fleet is back where it was (or nothing matched), 2 when undoing failed too.
"""

import datetime
import json
import logging
import os
import signal
import time

import salt.client
import salt.exceptions
import salt.utils.event
import salt.utils.files
import salt.utils.http
import salt.utils.jid
import salt.utils.minions

# the bundle's helpers on the master: installed beside Salt, or synced to its extmods/utils
try:
    import vumi_notify
    import vumi_settings
    from vumi_version import VERSION
except ImportError:
    VERSION = vumi_notify = vumi_settings = None

log = logging.getLogger(__name__)

__virtualname__ = "vumi"

#: seconds each phase waits for every host (a host silent that long fails the run)
TIMEOUT = 120
#: seconds between the run's heartbeats, and a host's hold after the last one
BEAT, HOLD = 10, 90
#: exit codes of salt-run: the run failed (the fleet is back where it was), and the undoing failed too
FAILED, PARTIAL = 1, 2


def __virtual__():
    return __virtualname__


def status(tgt="*", tgt_type="glob", timeout=30, table=None):
    """
    What serves, per host and environment (``vumi.summary`` on each targeted
    minion): the current release and revision, whether the branch tip upstream
    is ahead (``behind``), per port the release its running process has (not
    where ``current`` points: a host published but not restarted shows it),
    and the fleet run holding it, if any, and whether that run's runner is
    still alive. A host that does not answer, or fails, is a row with its
    ``error``.

    table
        One line per host and environment (the default on a terminal); with
        ``--out=json`` (or ``table=False``) the rows as data.

    CLI Example:

    .. code-block:: bash

        salt-run vumi.status 'web*'
        salt-run vumi.status 'web*' --out=json
    """
    client = salt.client.get_local_client(__opts__["conf_file"])
    returns = client.cmd(tgt, "vumi.summary", tgt_type=tgt_type, timeout=timeout, full_return=True)
    rows = []
    for host in sorted(returns):
        ret = returns[host]
        envs = ret.get("ret") if isinstance(ret, dict) else ret
        if not isinstance(envs, list) or (isinstance(ret, dict) and ret.get("retcode")):
            rows.append({"host": host, "error": _short(str(envs))})
            continue
        rows.extend(dict(host=host, **env) for env in envs)
    for row in rows:
        if isinstance(row.get("held"), dict):
            row["held"]["runner"] = run_state(__opts__, row["held"].get("run"))[0]
    if table is None:
        table = not __opts__.get("output")
    return status_table(rows) if table else rows


def status_table(rows):
    """The rows of ``status`` as text: one line per host and environment."""
    head = ("HOST", "ENV", "CURRENT", "REVISION", "SERVING", "HELD", "BEHIND")
    lines = []
    for row in rows:
        if "error" in row:
            lines.append((row["host"], "-", "ERROR", "", row["error"].splitlines()[0][:120], "", ""))
            continue
        lines.append((row["host"], row.get("environment") or "-", row.get("release") or "-",
                      (row.get("revision") or "-")[:10], _serving(row), _held(row.get("held")),
                      {True: "yes", False: "no"}.get(row.get("behind"), "?")))  # fmt: skip
    return _table(head, lines)


def history(branch=None, tgt="*", tgt_type="glob", limit=10, timeout=30, table=None):
    """
    The last ``limit`` deploys, updates, rollbacks, failures, discards and locks
    of environment ``branch`` on each host ``tgt`` matches (``vumi.history``),
    newest first: one line per entry and host, or with ``--out=json`` (or
    ``table=False``) ``{host: rows}``.

    CLI Example:

    .. code-block:: bash

        salt-run vumi.history staging 'web*' limit=5
    """
    if not branch or not isinstance(branch, str):
        return {"result": False, "retcode": FAILED, "comment": "name the environment: salt-run vumi.history staging"}
    client = salt.client.get_local_client(__opts__["conf_file"])
    returns = client.cmd(tgt, "vumi.history", [branch], kwarg={"limit": limit}, tgt_type=tgt_type,
                         timeout=timeout, full_return=True)  # fmt: skip
    found = {}
    for host in sorted(returns):
        ret = returns[host].get("ret") if isinstance(returns[host], dict) else returns[host]
        failed = not isinstance(ret, list) or (isinstance(returns[host], dict) and returns[host].get("retcode"))
        found[host] = {"error": _short(str(ret))} if failed else ret
    if table is None:
        table = not __opts__.get("output")
    return history_table(found) if table else found


def history_table(found):
    """``history``'s rows as text: one line per host and entry, the newest first."""
    head = ("HOST", "TIME", "ACTION", "RELEASE", "REVISION", "SUBJECT", "USER", "OUTCOME", "SECONDS")
    lines = []
    for host, rows in found.items():
        if isinstance(rows, dict):
            lines.append((host, "-", "ERROR", "", "", "", "", rows["error"].splitlines()[0][:120], ""))
            continue
        for row in rows:
            lines.append((host, row.get("time") or "-", row.get("action"), row.get("release") or "-",
                          (row.get("revision") or "-")[:10], (row.get("subject") or "-")[:40], row.get("user") or "-",
                          (row.get("outcome") or "")[:80], "" if row.get("duration") is None else f"{row['duration']:g}"))  # fmt: skip
    return _table(head, lines)


def _table(head, lines):
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *lines])


def _serving(row):
    """Its ports in a few words: "8001 8002 ok", or each port that differs: "8001 down", "8002 runs R"."""
    releases = row.get("releases") or {}
    answering = set(row.get("answering") or [])
    odd = []
    for port in row.get("ports") or []:
        runs = releases.get(str(port), releases.get(port))
        if runs is None:
            odd.append(f"{port} down")
        elif runs != row.get("release"):
            odd.append(f"{port} runs {runs} (not restarted)")
        elif port not in answering:
            odd.append(f"{port} not answering")
    down = "MAINTENANCE (503 via nginx), " if row.get("maintenance") else ""
    if odd:
        return down + ", ".join(odd)
    return down + (f"{' '.join(map(str, row.get('ports') or []))} ok".strip() if row.get("ports") else "no ports")


def _held(held):
    if not held:
        return "-"
    runner = held.get("runner")
    return f"run {held.get('run') or '?'} ({held.get('release')}{', runner gone' if runner == 'gone' else ''})"


def _short(text, limit=500):
    """A minion's error in a line or few: a traceback is cut to its last line (the minion's log has it all)."""
    text = text.strip()
    # Salt's word for a module that raised: its traceback (an app's log tail quoted in an error is kept)
    if text.startswith(("Traceback (most recent call last)", "The minion function caused an exception")):
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = f"{last} (the minion's log has the traceback)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------
# A fleet run's record on the master, its heartbeat and its events
# --------------------------------------------------------------------------


def _runs_dir(opts):
    return os.path.join(opts["cachedir"], "vumi", "runs")


def _process_start(pid):
    """When process ``pid`` started (clock ticks since boot), so a reused pid is not taken for it; None: gone."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def run_state(opts, run):
    """
    Whether fleet run ``run`` is still going: ("running", its record), or ("gone",
    its record or None): its record is gone, its process is, or it stopped beating.
    """
    if not run:
        return "gone", None
    try:
        with salt.utils.files.fopen(os.path.join(_runs_dir(opts), f"{os.path.basename(str(run))}.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return "gone", None
    alive = record.get("pid_start") is not None and _process_start(record.get("pid")) == record["pid_start"]
    if alive and time.time() - record.get("beat", 0) < 3 * BEAT + 5:
        return "running", record
    return "gone", record


class Run:
    """
    One fleet run: its id (the hosts' holds name it), its record on the master
    (pid, phase, last beat), the heartbeat that renews its hosts' holds, and its events.
    """

    def __init__(self, opts, client, branch, hosts, hold, notify=()):
        self.opts, self.client, self.branch, self.hosts, self.hold = opts, client, branch, hosts, hold
        self.notify = notify
        self.id = salt.utils.jid.gen_jid(opts)
        self.path = os.path.join(_runs_dir(opts), f"{self.id}.json")
        self.record = {"run": self.id, "branch": branch, "hosts": hosts, "pid": os.getpid(),
                       "pid_start": _process_start(os.getpid()), "master": opts.get("id"),
                       "started": _release_now(), "phase": "start", "beat": time.time()}  # fmt: skip
        self.beating = False  # from prepare on: the hosts may hold for this run
        self.lost = set()
        self.last = 0
        os.makedirs(_runs_dir(opts), mode=0o700, exist_ok=True)
        self._write()

    def _write(self):
        tmp = f"{self.path}.tmp"
        with salt.utils.files.fopen(tmp, "w") as f:
            json.dump(self.record, f)
        os.replace(tmp, self.path)

    def beat(self, phase):
        """Called while waiting: every ``BEAT`` seconds, the record and the hosts' holds renewed."""
        if time.monotonic() - self.last < BEAT:
            return
        self.last = time.monotonic()
        self.record.update(phase=phase, beat=time.time())
        try:
            self._write()
            hosts = [h for h in self.hosts if h not in self.lost]
            if self.beating and hosts:  # sent, not waited for: a host that misses one renews at the next
                self.client.run_job(hosts, "vumi.fleet_step", ["renew", self.branch],
                                    kwarg={"run": self.id, "hold": self.hold}, tgt_type="list")  # fmt: skip
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("vumi fleet run %s: heartbeat: %s", self.id, exc)

    def end(self):
        try:
            os.remove(self.path)
        except OSError:
            pass

    def event(self, phase, **data):
        """``vumi/fleet/<env>/<phase>`` on the master's bus; a bus that is down is logged, never fatal."""
        tag = f"vumi/fleet/{self.branch}/{phase}"
        try:
            with salt.utils.event.get_master_event(self.opts, self.opts["sock_dir"], listen=False) as bus:
                bus.fire_event(dict(data, run=self.id, branch=self.branch, phase=phase), tag)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("vumi fleet run %s: could not fire %s: %s", self.id, tag, exc)
        if self.notify:
            timings = [v for v in (data.get("timings") or {}).values() if isinstance(v, (int, float))]
            fields = {"environment": self.branch, "host": self.opts.get("id"), "run": self.id,
                      "hosts": ", ".join(data.get("hosts") or self.hosts), "release": data.get("release"),
                      "revision": data.get("revision"), "error": data.get("error"),
                      "outcome": {True: "deployed", False: "failed"}.get(data.get("result"), data.get("at") or phase),
                      "duration": round(sum(timings), 2) if timings else None}  # fmt: skip
            vumi_notify.send(self._query, self.notify, f"fleet/{phase}", fields)

    def _query(self, url, opts=None, **kwargs):
        return salt.utils.http.query(url, opts=dict(self.opts, **(opts or {})), **kwargs)


# --------------------------------------------------------------------------
# The fleet deploy
# --------------------------------------------------------------------------


class Failed(Exception):
    """
    A phase failed on one or more hosts: the run stops, undoes, and says so, one
    line per host. ``failures``: [(host, error, kind)], ``kind`` the bundle's error
    as the host named it (``{"kind": "Held", ...facts}``) or None; ``lost``: the
    hosts that did not answer in time.
    """

    def __init__(self, phase, failures, lost=(), timeout=None):
        self.phase, self.failures, self.lost = phase, sorted(failures, key=lambda f: f[0]), set(lost)
        self.host, self.error, self.kind = self.failures[0]
        super().__init__("\n".join(self.line(host, error, timeout) for host, error, _ in self.failures))

    def line(self, host, error, timeout):
        if host in self.lost:
            return f"{host} did not answer within {timeout:g} s at {self.phase}; it is unreachable or busy"
        first, *rest = [line for line in _short(str(error), 1 << 16).splitlines() if line.strip()] or [""]
        tail = f" … {rest[-1].strip()[:300]}" if rest else ""  # the last line of a log tail says most
        first = first if len(first) <= 400 else first[:399] + "…"
        return f"{host} failed at {self.phase}: {first}{tail}"

    @classmethod
    def one(cls, phase, host, error):
        return cls(phase, [(host, error, None)])


#: a host that refused with one of these did nothing: there is nothing of this run to undo on it
REFUSALS = ("Locked", "Held", "Busy")


def _error(value, retcode):
    """What went wrong on a minion, from what it returned: (message, the bundle's error as data or None), or None."""
    if isinstance(value, dict) and isinstance(value.get("error"), dict):  # vumi.fleet_step: the error and its kind
        return str(value["error"].get("message")), value["error"]
    return (None, None) if (said := _said(value, retcode)) is None else (said, None)


def _said(value, retcode):
    """What went wrong on a minion, said in its words (None: nothing did)."""
    if isinstance(value, dict) and value and all(isinstance(v, dict) and "result" in v for v in value.values()):
        failed = [str(v.get("comment")) for v in value.values() if v["result"] is False]
        return "; ".join(failed) or (f"returned retcode {retcode}" if retcode else None)
    if not retcode:
        return None
    if isinstance(value, list):  # a render error
        value = "; ".join(map(str, value))
    return _short(str(value).removeprefix("ERROR: "))


class Fleet:
    """
    The targeted hosts of one fleet run, and calls to them that return or raise
    ``Failed``; each waits at most ``timeout`` seconds, beating the run's heart
    meanwhile. A host that did not answer in time is lost: not asked again.
    """

    def __init__(self, client, hosts, timeout, run=None):
        self.client, self.hosts, self.timeout, self.run = client, hosts, timeout, run
        self.timings = {}
        self.lost = run.lost if run is not None else set()

    def call(self, phase, hosts, fun, arg=(), kwarg=None):
        """
        ``fun`` on ``hosts``, all at once: {host: return}. Hosts that failed or did
        not answer raise ``Failed``, once every host has returned or the time is up.
        """
        out, failures = self._ask(phase, hosts, fun, arg, kwarg)
        if failures:
            raise Failed(phase, failures, self.lost, self.timeout) from None
        return out

    def step(self, phase, hosts, step, arg=(), kwarg=None):
        """``vumi.<step>`` on ``hosts`` through ``vumi.fleet_step``, as ``call``: a failure has its kind."""
        return self.call(phase, hosts, "vumi.fleet_step", [step, *arg], kwarg)

    def quiet_step(self, phase, hosts, step, arg=(), kwarg=None):
        """``vumi.<step>`` on ``hosts`` through ``vumi.fleet_step``, as ``quietly``."""
        return self.quietly(phase, hosts, "vumi.fleet_step", [step, *arg], kwarg)

    def quietly(self, phase, hosts, fun, arg=(), kwarg=None):
        """
        The same as ``call`` for the undoing: ({host: return}, ["host: what went
        wrong"]), nothing raised; a host lost before is one of the problems, unasked.
        """
        lost = [h for h in hosts if h in self.lost]
        out, failures = self._ask(phase, [h for h in hosts if h not in self.lost], fun, arg, kwarg)
        problems = [f"{host}: did not answer earlier in this run; not asked to {phase}" for host in lost]
        return out, problems + [f"{host}: {_short(str(error))}" for host, error, _ in failures]

    def _ask(self, phase, hosts, fun, arg, kwarg):
        """One job to ``hosts``, waiting at most ``timeout`` for them: ({host: return}, [(host, error, kind)])."""
        started = time.monotonic()
        rets = {}
        if hosts:
            deadline = started + self.timeout
            replies = self.client.cmd_iter_no_block(hosts, fun, arg=list(arg), kwarg=kwarg or {}, tgt_type="list",
                                                    timeout=self.timeout, full_return=True)  # fmt: skip
            try:
                for reply in replies:
                    rets.update(reply or {})
                    if all(h in rets for h in hosts) or time.monotonic() >= deadline:
                        break
                    if self.run is not None:
                        self.run.beat(phase)
            finally:
                replies.close()
        self.timings[phase] = round(self.timings.get(phase, 0) + time.monotonic() - started, 2)
        out, failures = {}, []
        for host in hosts:
            ret = rets.get(host)
            if not isinstance(ret, dict) or "ret" not in ret or ret.get("out") == "no_return":
                self.lost.add(host)
                failures.append((host, f"did not answer {fun} within {self.timeout:g} s", None))
                continue
            error, kind = _error(ret["ret"], ret.get("retcode"))
            if error:
                failures.append((host, error, kind))
                continue
            out[host] = ret["ret"]
        return out, failures


def _one_version(versions):
    """
    The bundle's one version on every host (and this runner, when it knows its own),
    or ``Failed`` naming the hosts that run another: the phases' calls must mean the same.
    """
    seen = {}
    for host in sorted(versions):
        seen.setdefault(str((versions[host] or {}).get("version")), []).append(host)
    want = VERSION or max(seen, key=lambda v: len(seen[v]))
    odd = {v: hosts for v, hosts in seen.items() if v != want}
    if not odd:
        return want
    said = "; ".join(f"{', '.join(hosts)} {v}" for v, hosts in sorted(odd.items()))
    first = min(h for hosts in odd.values() for h in hosts)
    raise Failed.one("version", first, f"these hosts run another version of vumi-salt than {want}: {said}; "
                                   "upgrade or sync them first (salt '*' saltutil.sync_all)")  # fmt: skip


def _size(hosts, value, name, example):
    """``value`` hosts (``2``) or a share of ``hosts`` (``25%``), at least one; ValueError naming it."""
    text = str(value).strip()
    try:
        size = max(1, int(len(hosts) * float(text[:-1]) / 100)) if text.endswith("%") else int(text)
    except ValueError:
        size = 0
    if size < 1 or isinstance(value, bool):
        raise ValueError(
            f"invalid {name} {value!r}: a number of hosts ({example[0]}) or a share of them ({example[1]})"
        )
    return size


def _batches(hosts, batch):
    if batch in (None, ""):
        return [hosts]
    size = _size(hosts, batch, "batch", ("2", "25%"))
    return [hosts[i : i + size] for i in range(0, len(hosts), size)]


def _canary(hosts, canary):
    """The first hosts of a canary: ``canary`` hosts (``1``) or a share of them (``25%``), at least one; [] for none."""
    if canary in (None, "", 0):
        return []
    return hosts[: _size(hosts, canary, "canary", ("1", "10%"))]


def _release_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")


def _seconds(name, value, most=86400):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= most:
        raise ValueError(f"invalid {name} {value!r}: seconds, more than 0 and at most {most}")
    return value


def _hosts(tgt, tgt_type, what):
    """The minions ``tgt`` matches (every accepted key, up or not), or ValueError naming the target."""
    found = salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type)
    hosts = sorted(found["minions"])
    if not hosts:
        raise ValueError(f"no minion matches {tgt!r} ({tgt_type}): {what}")
    return hosts


def deploy(branch=None, tgt=None, tgt_type="glob", revision=None, release=None, batch=None, hold=HOLD,
           timeout=TIMEOUT, test=False, canary=None, canary_wait=30, force=False, notify=None, **kwargs):  # fmt: skip
    """
    Deploy environment ``branch`` to the hosts ``tgt`` matches, all or none:
    one commit (``revision``, else the branch tip, asked once of the first
    host) and one release name (``release``, else the time now in UTC) for
    every host; prepared and health-checked everywhere, published everywhere
    only if every host prepared, then the webapps restarted by ``batch``
    (hosts at a time: ``2`` or ``25%``; default all together). After a
    failure on any host at any phase every host is on the release it had,
    serving; the return says which hosts failed, at which phase, and why,
    one line per host.

    timeout
        Seconds each phase waits for every host (default 120): a host that
        has not answered by then fails the run ("web-2 did not answer within
        120 s at prepare; it is unreachable or busy") and is asked nothing more.
    hold
        Seconds a host stays held after this run's last heartbeat (every 10 s;
        default 90): should the run die, its holds lapse that long after.
    canary
        Hosts (``1``) or a share of them (``10%``) to publish and restart
        first; they are watched for ``canary_wait`` seconds (every port
        running the release and answering HTTP, every process running it,
        none restarted meanwhile) before the others follow. A canary that
        fails is switched and restarted back; the others never switched.
    force
        First bring a fleet a dead run left split or held back onto one
        release (as ``vumi.recover``), then deploy. Never overrides a run
        that is still going.
    test
        Change nothing: run ``vumi.check`` on every host and say which hosts,
        revision and release it would deploy, or which hosts would fail and why.
    notify
        Webhooks for the run's phases, as pillar ``notify`` (``fleet/start``,
        ``fleet/end``, ``fleet/failed``...), POSTed from the master; default:
        the master's own config ``vumi: {notify: [...]}``.

    CLI Example:

    .. code-block:: bash

        salt-run vumi.deploy staging 'web*'
        salt-run vumi.deploy production 'G@role:web' tgt_type=compound batch=25% canary=1
    """
    report = {"branch": branch, "hosts": [], "revision": None, "release": release, "result": False}
    run = None
    try:
        try:
            if not branch or not isinstance(branch, str) or not tgt:
                raise ValueError("name the environment and the hosts: salt-run vumi.deploy staging 'web*'")
            _batches(["x"], batch)  # bad arguments fail before anything runs
            _canary(["x"], canary)
            _seconds("timeout", timeout)
            _seconds("hold", hold)
            _seconds("canary_wait", canary_wait, 3600)
            hooks = _notify_hooks(notify)
            hosts = report["hosts"] = _hosts(tgt, tgt_type, "nothing was deployed")
            client = salt.client.get_local_client(__opts__["conf_file"])
            if not test:
                run = Run(__opts__, client, branch, hosts, hold, hooks)
                report["run"] = run.id
                run.event("start", hosts=hosts, release=release, revision=revision)
            fleet = Fleet(client, hosts, timeout, run)
            report["version"] = _one_version(fleet.call("version", hosts, "vumi.version"))
            # one commit for the fleet: resolved once, so a push during the run changes nothing
            sha = fleet.step("revision", hosts[:1], "remote_revision", [branch],
                             {"revision": revision} if revision else {})[hosts[0]]  # fmt: skip
            if not sha:
                raise Failed.one("revision", hosts[0], f"no commit found for {revision or 'the branch ' + branch}")
            report["revision"] = sha
            report["release"] = release = release or _release_now()
        except ValueError as exc:
            return _ended(report, str(exc), run=run)
        except Failed as exc:
            return _ended(report, str(exc), exc, run=run)
        if test:
            return _dry_run(fleet, report, branch, sha, release)
        with _stopped_by_signals():
            return _run(fleet, report, branch, sha, release, batch, canary, canary_wait, force, kwargs)
    finally:
        if run is not None:
            run.end()


def _notify_hooks(given):
    """The fleet run's webhooks: ``notify``, else the master's config ``vumi:notify``; ValueError names a typo."""
    hooks = given if given is not None else (__opts__.get("vumi") or {}).get("notify")
    if not hooks:
        return []
    if vumi_settings is None:
        log.warning("vumi fleet run: the bundle's helpers are not on this master (salt-run saltutil.sync_all): "
                    "no notifications")  # fmt: skip
        return []
    try:
        return vumi_settings.notify(hooks)
    except salt.exceptions.SaltInvocationError as exc:
        raise ValueError(str(exc)) from None


def _dry_run(fleet, report, branch, sha, release):
    """``test=True``: ``vumi.check`` on every host; what would be deployed, or which hosts would fail."""
    hosts = fleet.hosts
    checks, problems = fleet.quiet_step("check", hosts, "check", [branch])
    for host in sorted(checks):
        failing = {k: v for k, v in (checks[host] or {}).get("checks", {}).items() if not v.get("ok")}
        problems += [f"{host}: {name}: {_short(str(item.get('detail')), 300)}" for name, item in failing.items()]
    currents = fleet.quiet_step("current", [h for h in hosts if h not in fleet.lost], "current", [branch])[0]
    report["current"] = {h: (c or {}).get("release") for h, c in currents.items()}
    if problems:
        failing = sorted({p.split(":", 1)[0] for p in problems})
        return _ended(report, f"would fail on {', '.join(failing)} of {len(hosts)} hosts:\n  " + "\n  ".join(problems))
    report["result"] = None
    return _ended(report, f"would deploy {branch} release {release} at {sha[:12]} to {len(hosts)} hosts: "
                          f"{', '.join(hosts)} (vumi.check passed on each)")  # fmt: skip


class Stopped(Exception):
    """The run was told to stop (SIGTERM, SIGINT): it undoes what it did, then ends."""


class _stopped_by_signals:
    """While the run goes: SIGTERM and SIGINT stop it (once: the undoing is not interrupted)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.saved = {}

    def __enter__(self):
        try:
            for sig in self.SIGNALS:
                self.saved[sig] = signal.signal(sig, self._stop)
        except ValueError:  # not the main thread: Salt's own handling stays
            pass
        return self

    def _stop(self, signum, _frame):
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(f"stopped by {signal.Signals(signum).name}")

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _run(fleet, report, branch, sha, release, batch, canary, canary_wait, force, kwargs):
    hosts, run = fleet.hosts, fleet.run
    # hooks marked once run on the first host; the others skip them
    common = {"once_on": hosts[0], "hold": run.hold, "run": run.id, **kwargs}
    first = _canary(hosts, canary)
    rest = [h for h in hosts if h not in first]
    published, restarted = [], []
    report["previous"] = {}
    phase = "recover"
    try:
        if force:
            report["recovered"] = _recover(fleet, branch)
        phase = "prepare"
        run.beating = True
        fleet.step(phase, hosts, "prepare", [branch], dict(common, revision=sha, release=release))
        run.event(phase, hosts=hosts, release=release, revision=sha, took=fleet.timings.get(phase))
        for group, batches in ((first, [first] if first else []), (rest, _batches(rest, batch) if rest else [])):
            if not group:
                continue
            phase = "publish"
            published += group
            done = fleet.step(phase, group, "publish", [branch, release], common)
            report["previous"].update({h: r.get("previous") for h, r in done.items()})
            run.event(phase, hosts=group, release=release, revision=sha)
            phase = "restart"
            for hosts_now in batches:
                restarted += hosts_now
                fleet.call(phase, hosts_now, "state.sls", ["vumi.webapp"], {"pillar": {"branch": branch}})
            run.event(phase, hosts=group, release=release, revision=sha)
            if group is first:
                phase = "canary"
                _watch(fleet, branch, release, first, canary_wait)
                run.event(phase, hosts=first, release=release, revision=sha, watched=canary_wait)
    except (Failed, Stopped) as exc:
        failed = exc if isinstance(exc, Failed) else Failed.one(phase, "the run", str(exc))
        said = _explain_held(failed, branch)
        run.event("failed", at=phase, hosts=[h for h, _, _ in failed.failures], error=said, release=release)
        undone, problems = _undo(fleet, branch, release, phase, published, restarted, failed)
        problems += _unhold(fleet, branch, release, phase)
        report["timings"] = fleet.timings
        run.event("undone", release=release, problems=problems)
        if problems:
            undone += (
                "\nTHE UNDOING FAILED TOO, check these hosts by hand (salt-run vumi.status, then vumi.recover):\n  "
            )
            undone += "\n  ".join(problems)
        return _ended(report, f"{said}\n{undone}", failed, run=run, retcode=PARTIAL if problems else FAILED)
    problems = _unhold(fleet, branch, release, phase)
    report["timings"] = fleet.timings
    report["result"] = True
    took = ", ".join(f"{k} {v:g}s" for k, v in fleet.timings.items())
    comment = (f"deployed {branch} release {release} at {sha[:12]} to {len(hosts)} hosts: {', '.join(hosts)} "
               f"({took})")  # fmt: skip
    if problems:
        comment += f"\nstill held (the holds lapse within {run.hold:g} s): " + "; ".join(problems)
    return _ended(report, comment, run=run)


def _unhold(fleet, branch, release, phase):
    """Every host this run may hold, unheld; a host lost at prepare is no problem (its hold lapses; nothing published)."""
    _, problems = fleet.quiet_step("unhold", fleet.hosts, "unhold", [branch], {"release": release})
    if phase in ("recover", "prepare"):
        problems = [p for p in problems if p.split(":", 1)[0] not in fleet.lost]
    return problems


def _explain_held(failed, branch):
    """A host held by another run: whether that run is still going, and what to do when it is not."""
    said = str(failed)
    for host, _, kind in failed.failures:
        if (kind or {}).get("kind") == "Held" and kind.get("run"):
            state, record = run_state(__opts__, kind["run"])
            if state == "running":
                said += f"\n{host}: run {kind['run']} is still going (pid {record.get('pid')}, {record.get('phase')})"
            else:
                said += (f"\n{host}: run {kind['run']} is gone (its runner stopped): salt-run vumi.recover "
                         f"{branch} <target> puts the fleet back on one release and ends its holds, or deploy "
                         "again with force=True")  # fmt: skip
    return said


def _watch(fleet, branch, release, hosts, wait):
    """
    The canary: for ``wait`` seconds, every port of ``hosts`` runs ``release`` and
    answers HTTP, every process runs it, and none was restarted meanwhile; else ``Failed``.
    """
    started = time.monotonic()
    deadline = started + wait
    first = None
    while True:
        seen = fleet.step("canary", hosts, "serving", [branch])
        pids, bad = {}, {}
        for host in sorted(seen):
            ports = {f"port {p}": row for p, row in seen[host]["ports"].items() if row.get("configured")}
            procs = {f"process {n}": row for n, row in seen[host]["processes"].items()}
            for what, row in {**ports, **procs}.items():
                if row.get("release") != release or row.get("state") not in ("RUNNING", "STARTING"):
                    bad.setdefault(host, []).append(f"{what} is {row.get('state')} on {row.get('release')}")
                elif what.startswith("port") and not row.get("answers"):
                    bad.setdefault(host, []).append(f"{what} does not answer HTTP below 500")
                pids[(host, what)] = row.get("pid")
        first = pids if first is None else first
        for (host, what), pid in pids.items():
            if first.get((host, what)) not in (None, pid):
                bad.setdefault(host, []).append(f"{what} was restarted (pid {first[(host, what)]}, now {pid})")
        if bad:
            raise Failed("canary", [(h, "; ".join(found), None) for h, found in bad.items()])
        left = deadline - time.monotonic()
        if left <= 0:
            fleet.timings["canary"] = round(time.monotonic() - started, 2)
            return
        _pause(fleet, "canary", min(2, left))


def _pause(fleet, phase, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if fleet.run is not None:
            fleet.run.beat(phase)
        time.sleep(min(0.5, max(0, end - time.monotonic())))


def _undo(fleet, branch, release, phase, published, restarted, failed):
    """After ``failed`` at ``phase``: every host back on the release it had. (What was done, [problems])."""
    hosts = fleet.hosts
    if not published:
        refused = {h for h, _, kind in failed.failures if (kind or {}).get("kind") in REFUSALS}
        _, problems = fleet.quiet_step("discard", [h for h in hosts if h not in refused], "discard", [branch, release])
        problems = [p for p in problems if p.split(":", 1)[0] not in fleet.lost]
        said = f"nothing was published; release {release} was discarded on every host that had prepared it"
        if refused:
            said += f" ({', '.join(sorted(refused))} refused the deploy before doing anything)"
        if fleet.lost:
            said += (
                f"; {', '.join(sorted(fleet.lost))} did not answer: its hold lapses by itself, and "
                "vumi.cleanup removes a release it prepared"
            )
        return said, problems
    reverted, problems = fleet.quiet_step("revert", published, "revert", [branch, release])
    back = sorted(h for h, r in reverted.items() if r.get("reverted"))
    # "every host" only when every host said so: a revert that failed is named below, never glossed over
    said = "every host is on its previous release again" if not problems else "not every host could switch back"
    said += f" (switched back: {', '.join(back) or 'none'})"
    never = [h for h in hosts if h not in published]
    if never:
        _, more = fleet.quiet_step("discard", never, "discard", [branch, release])
        problems += more
        said += f"; never switched: {', '.join(never)}"
    if restarted:
        _, more = fleet.quietly("restart back", restarted, "state.sls", ["vumi.webapp"], {"pillar": {"branch": branch}})
        problems += more
        said += f"; restarted back onto it: {', '.join(h for h in restarted if h not in fleet.lost)}"
    else:
        said += "; no webapp had been restarted"
    return said, problems


def _ended(report, comment, failed=None, run=None, retcode=FAILED):
    report["comment"] = comment
    if failed is not None:
        report["failed"] = {"host": failed.host, "phase": failed.phase, "error": failed.error}
        if failed.kind:
            report["failed"]["kind"] = failed.kind
        report["failures"] = [{"host": h, "error": e, "lost": h in failed.lost} for h, e, _ in failed.failures]
    if report["result"] is False:
        report["retcode"] = retcode
        __context__["retcode"] = retcode
    if run is not None:
        run.event("end", result=report["result"], release=report.get("release"), revision=report.get("revision"),
                  hosts=report.get("hosts"), comment=comment, timings=report.get("timings"))  # fmt: skip
    return report


# --------------------------------------------------------------------------
# After a run died: one release again
# --------------------------------------------------------------------------


def recover(branch=None, tgt=None, tgt_type="glob", release=None, timeout=TIMEOUT):
    """
    Bring the hosts ``tgt`` matches back onto one release of ``branch`` after
    a fleet run died (its master or ``salt-run`` stopped mid-way): the release
    most hosts serve (what their running webapps and processes run, not where
    ``current`` points; a tie goes to the older), or ``release``. On every
    host the holds end, ``current`` is that release, and every port and
    process running another is restarted onto it. Refused while the run
    holding a host is still going. Exits 0 when every host is on it, else 2.

    CLI Example:

    .. code-block:: bash

        salt-run vumi.recover staging 'web*'
    """
    report = {"branch": branch, "hosts": [], "result": False}
    try:
        if not branch or not isinstance(branch, str) or not tgt:
            raise ValueError("name the environment and the hosts: salt-run vumi.recover staging 'web*'")
        _seconds("timeout", timeout)
        hosts = report["hosts"] = _hosts(tgt, tgt_type, "nothing was recovered")
        fleet = Fleet(salt.client.get_local_client(__opts__["conf_file"]), hosts, timeout)
        report.update(_recover(fleet, branch, release))
    except ValueError as exc:
        return _ended(report, str(exc))
    except Failed as exc:
        return _ended(report, str(exc), exc)
    report["result"] = not report["problems"]
    said = f"{branch} on {len(report['settled'])} of {len(hosts)} hosts is release {report['release']}, unheld"
    changed = {h: r for h, r in report["settled"].items() if r.get("was") != r.get("release") or r.get("restarted")}
    said += "".join(f"\n  {h}: was {r.get('was')}, restarted {', '.join(map(str, r['restarted'])) or 'nothing'}"
                    for h, r in sorted(changed.items()))  # fmt: skip
    if report["problems"]:
        said += "\nNOT RECOVERED, check these hosts by hand:\n  " + "\n  ".join(report["problems"])
    return _ended(report, said, retcode=PARTIAL)


def _recover(fleet, branch, release=None):
    """``recover`` on the fleet's hosts: {"release", "settled": {host: what it did}, "problems"}; Failed when refused."""
    seen, problems = fleet.quiet_step("recover", fleet.hosts, "serving", [branch])
    going = []
    for host in sorted(seen):
        held = seen[host].get("held") or {}
        if held and run_state(__opts__, held.get("run"))[0] == "running":
            going.append((host, f"held by run {held.get('run')}, which is still going; wait for it to end", None))
    if going:
        raise Failed("recover", going)
    if release is not None:
        targets = {host: release for host in seen}
    else:
        revision = _most_served(seen)
        if revision is None:
            raise Failed.one("recover", min(fleet.hosts), f"no host has a release of {branch} to recover to")
        targets, missing = _releases_of(seen, revision)
        problems += [f"{host}: has no release of {revision[:12]} running or current" for host in missing]
    settled = {}
    for target in sorted(set(targets.values())):  # hosts deployed one by one may name one commit's release apart
        done, more = fleet.quiet_step("recover", sorted(h for h, r in targets.items() if r == target), "settle",
                                      [branch, target])  # fmt: skip
        settled.update(done)
        problems += more
    return {"release": ", ".join(sorted(set(targets.values()))), "revision": revision if release is None else None,
            "settled": settled, "problems": problems}  # fmt: skip


def _releases_of(seen, revision):
    """Per host, its release of ``revision``: the one it runs, else its current one. And the hosts with neither."""
    targets, missing = {}, []
    for host, now in sorted(seen.items()):
        revisions = now.get("revisions") or {}
        running = [r.get("release") for r in _rows(now) if revisions.get(r.get("release")) == revision]
        found = (
            running[0] if running else (now.get("current") if revisions.get(now.get("current")) == revision else None)
        )
        if found:
            targets[host] = found
        else:
            missing.append(host)
    return targets, missing


def _rows(now):
    """A host's running ports (those configured) and processes, from ``vumi.serving``."""
    return [r for r in now.get("ports", {}).values() if r.get("configured")] + list(now.get("processes", {}).values())


def _most_served(seen):
    """
    The revision most hosts serve (every running port and process on one release
    of it); a tie: the one whose release is older. None: nothing runs anywhere and
    no host has a current release.
    """
    served = {}
    for host, now in seen.items():
        revisions = now.get("revisions") or {}
        running = {r["release"] for r in _rows(now) if r.get("release")}
        if len(running) == 1:
            release = running.pop()
            served.setdefault(revisions.get(release) or release, []).append((release, host))
    if not served:  # nothing runs anywhere: the release most hosts have current
        for host, now in seen.items():
            if now.get("current"):
                key = (now.get("revisions") or {}).get(now["current"]) or now["current"]
                served.setdefault(key, []).append((now["current"], host))
    if not served:
        return None
    most = max(len(h) for h in served.values())
    return min((min(served[k])[0], k) for k in served if len(served[k]) == most)[1]
