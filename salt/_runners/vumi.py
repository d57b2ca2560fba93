"""
The fleet, from the master: a deploy that keeps all or none, and a view of it.

.. code-block:: bash

    salt-run saltutil.sync_all                # once, and after each upgrade of the bundle
    salt-run vumi.deploy staging 'web*'       # what vumi.orch.deploy runs
    salt-run vumi.status 'web*'
    salt-run vumi.status 'G@role:web' tgt_type=compound --out=json

``vumi.deploy`` resolves one commit and one release name for every host, then:

1. **prepare** on every host (health-checked; the host is held for this deploy:
   any other deploy of the environment is refused until the end);
2. **publish** on every host, only if every host prepared;
3. **restart** the webapps, host by host batch (``batch``), each port once the
   previous one answers again.

A failure anywhere leaves the fleet on the old release, serving: after prepare,
the new release is discarded everywhere; after publish or a restart, every host
that switched switches back, and every host that restarted restarts back.
"""

import datetime
import time

import salt.client
import salt.utils.minions

# the bundle's version on the master: installed beside Salt, or synced to its extmods/utils
try:
    from vumi_version import VERSION
except ImportError:
    VERSION = None

__virtualname__ = "vumi"


def __virtual__():
    return __virtualname__


def status(tgt="*", tgt_type="glob", timeout=30):
    """
    Per host and environment (``vumi.summary`` on each targeted minion): the
    current release and revision, whether the branch tip upstream is ahead
    (``behind``), and the webapp ports configured, running and answering HTTP.
    A host that does not answer, or fails, is a row with its ``error``.

    CLI Example:

    .. code-block:: bash

        salt-run vumi.status 'web*'
    """
    client = salt.client.get_local_client(__opts__["conf_file"])
    returns = client.cmd(tgt, "vumi.summary", tgt_type=tgt_type, timeout=timeout, full_return=True)
    rows = []
    for host in sorted(returns):
        ret = returns[host]
        envs = ret.get("ret") if isinstance(ret, dict) else ret
        if not isinstance(envs, list) or (isinstance(ret, dict) and ret.get("retcode")):
            rows.append({"host": host, "error": str(envs)[:500]})
            continue
        rows.extend(dict(host=host, **env) for env in envs)
    return rows


# --------------------------------------------------------------------------
# The fleet deploy
# --------------------------------------------------------------------------


class Failed(Exception):
    """
    A phase failed on ``host``: the run stops, undoes, and says so. ``kind``: the
    bundle's error as the host named it (``{"kind": "Held", ...facts}``), or None.
    """

    def __init__(self, phase, host, error, kind=None):
        super().__init__(f"{host} failed at {phase}: {error}")
        self.phase, self.host, self.error, self.kind = phase, host, error, kind


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
    return str(value).removeprefix("ERROR: ").strip()


class Fleet:
    """The targeted hosts of one fleet deploy, and calls to them that return or raise ``Failed``."""

    def __init__(self, client, hosts, timeout):
        self.client, self.hosts, self.timeout = client, hosts, timeout
        self.timings = {}

    def call(self, phase, hosts, fun, arg=(), kwarg=None):
        """
        ``fun`` on ``hosts``, all at once: {host: return}. The first host (by name)
        that failed or did not answer raises ``Failed``, once every host has returned.
        """
        out, failures = self._ask(phase, hosts, fun, arg, kwarg)
        if failures:
            raise Failed(phase, *failures[0]) from None
        return out

    def step(self, phase, hosts, step, arg=(), kwarg=None):
        """``vumi.<step>`` on ``hosts`` through ``vumi.fleet_step``, as ``call``: a failure has its kind."""
        return self.call(phase, hosts, "vumi.fleet_step", [step, *arg], kwarg)

    def quiet_step(self, phase, hosts, step, arg=(), kwarg=None):
        """``vumi.<step>`` on ``hosts`` through ``vumi.fleet_step``, as ``quietly``."""
        return self.quietly(phase, hosts, "vumi.fleet_step", [step, *arg], kwarg)

    def quietly(self, phase, hosts, fun, arg=(), kwarg=None):
        """The same as ``call`` for the undoing: ({host: return}, ["host: what went wrong"]), nothing raised."""
        out, failures = self._ask(phase, hosts, fun, arg, kwarg)
        return out, [f"{host}: {error}" for host, error, _ in failures]

    def _ask(self, phase, hosts, fun, arg, kwarg):
        """One job to ``hosts``, waiting at most ``timeout`` for them: ({host: return}, [(host, error, kind)])."""
        started = time.monotonic()
        rets = self.client.cmd(hosts, fun, arg=list(arg), kwarg=kwarg or {}, tgt_type="list",
                               timeout=self.timeout, full_return=True)  # fmt: skip
        self.timings[phase] = round(self.timings.get(phase, 0) + time.monotonic() - started, 2)
        out, failures = {}, []
        for host in hosts:
            ret = rets.get(host)
            if not isinstance(ret, dict) or "ret" not in ret or ret.get("out") == "no_return":
                failures.append((host, f"did not answer {fun} within {self.timeout}s", None))
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
    raise Failed("version", first, f"these hosts run another version of vumi-salt than {want}: {said}; "
                                   "upgrade or sync them first (salt '*' saltutil.sync_all)")  # fmt: skip


def _batches(hosts, batch):
    if batch in (None, ""):
        return [hosts]
    text = str(batch).strip()
    try:
        size = max(1, int(len(hosts) * float(text[:-1]) / 100)) if text.endswith("%") else int(text)
    except ValueError:
        size = 0
    if size < 1 or isinstance(batch, bool):
        raise ValueError(f"invalid batch {batch!r}: a number of hosts (2) or a share of them (25%)")
    return [hosts[i : i + size] for i in range(0, len(hosts), size)]


def _release_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")


def deploy(branch=None, tgt=None, tgt_type="glob", revision=None, release=None, batch=None,
           hold=1800, timeout=900, test=False, **kwargs):  # fmt: skip
    """
    Deploy environment ``branch`` to the hosts ``tgt`` matches, all or none:
    one commit (``revision``, else the branch tip, asked once of the first
    host) and one release name (``release``, else the time now in UTC) for
    every host; prepared and health-checked everywhere, published everywhere
    only if every host prepared, then the webapps restarted by ``batch``
    (hosts at a time: ``2`` or ``25%``; default all together). After a
    failure on any host at any phase every host is on the release it had,
    serving; the return says which host failed, at which phase, and why.

    hold
        Seconds a host refuses other deploys of the environment from its
        prepare on, should this run die before it ends the hold itself.
    test
        Change nothing: say which hosts, revision and release it would deploy.

    CLI Example:

    .. code-block:: bash

        salt-run vumi.deploy staging 'web*'
        salt-run vumi.deploy production 'G@role:web' tgt_type=compound batch=25%
    """
    report = {"branch": branch, "hosts": [], "revision": None, "release": release, "result": False}
    try:
        if not branch or not isinstance(branch, str) or not tgt:
            raise ValueError("name the environment and the hosts: salt-run vumi.deploy staging 'web*'")
        _batches(["x"], batch)  # a bad batch fails before anything runs
        client = salt.client.get_local_client(__opts__["conf_file"])
        found = salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type)
        hosts = sorted(found["minions"])
        if not hosts:
            raise ValueError(f"no minion matches {tgt!r} ({tgt_type})")
        report["hosts"] = hosts
        fleet = Fleet(client, hosts, timeout)
        report["version"] = _one_version(fleet.call("version", hosts, "vumi.version"))
        # one commit for the fleet: resolved once, so a push during the run changes nothing
        sha = fleet.step("revision", hosts[:1], "remote_revision", [branch],
                         {"revision": revision} if revision else {})[hosts[0]]  # fmt: skip
        if not sha:
            raise Failed("revision", hosts[0], f"no commit found for {revision or 'the branch ' + branch}")
        report["revision"] = sha
        report["release"] = release = release or _release_now()
    except ValueError as exc:
        return _ended(report, str(exc))
    except Failed as exc:
        return _ended(report, str(exc), exc)
    if test:
        currents = fleet.quiet_step("current", hosts, "current", [branch])[0]
        report["current"] = {h: (c or {}).get("release") for h, c in currents.items()}
        report["result"] = None
        return _ended(report, f"would deploy {branch} release {release} at {sha[:12]} to {len(hosts)} hosts: "
                              f"{', '.join(hosts)}")  # fmt: skip
    return _run(fleet, report, branch, sha, release, _batches(hosts, batch), hold, kwargs)


def _run(fleet, report, branch, sha, release, batches, hold, kwargs):
    hosts = fleet.hosts
    # hooks marked once run on the first host; the others skip them
    common = {"once_on": hosts[0], "hold": hold, **kwargs}
    restarted = []
    phase = "prepare"
    try:
        fleet.step(phase, hosts, "prepare", [branch], dict(common, revision=sha, release=release))
        phase = "publish"
        published = fleet.step(phase, hosts, "publish", [branch, release], common)
        report["previous"] = {h: r.get("previous") for h, r in published.items()}
        phase = "restart"
        for batch in batches:
            restarted += batch
            fleet.call(phase, batch, "state.sls", ["vumi.webapp"], {"pillar": {"branch": branch}})
    except Failed as exc:
        undone = _undo(fleet, branch, release, phase, restarted, exc)
        fleet.quiet_step("unhold", hosts, "unhold", [branch], {"release": release})
        report["timings"] = fleet.timings
        return _ended(report, f"{exc}\n{undone}", exc)
    fleet.quiet_step("unhold", hosts, "unhold", [branch], {"release": release})
    report["timings"] = fleet.timings
    report["result"] = True
    took = ", ".join(f"{k} {v:g}s" for k, v in fleet.timings.items())
    return _ended(report, f"deployed {branch} release {release} at {sha[:12]} to {len(hosts)} hosts: "
                          f"{', '.join(hosts)} ({took})")  # fmt: skip


def _undo(fleet, branch, release, phase, restarted, failed):
    """After ``failed`` at ``phase``: every host back on the release it had. Says what was done."""
    hosts = fleet.hosts
    if phase == "prepare":
        refused = (failed.kind or {}).get("kind") in REFUSALS  # it did nothing of this run: nothing to discard
        _, problems = fleet.quiet_step("discard", [h for h in hosts if not (refused and h == failed.host)],
                                       "discard", [branch, release])  # fmt: skip
        said = f"nothing was published; release {release} was discarded on every host that had prepared it"
        if refused:
            said += f" ({failed.host} refused the deploy before doing anything)"
    else:
        reverted, problems = fleet.quiet_step("revert", hosts, "revert", [branch, release])
        back = sorted(h for h, r in reverted.items() if r.get("reverted"))
        said = f"every host is on its previous release again (switched back: {', '.join(back) or 'none'})"
        if restarted:
            _, more = fleet.quietly("restart back", restarted, "state.sls", ["vumi.webapp"],
                                    {"pillar": {"branch": branch}})  # fmt: skip
            problems += more
            said += f"; restarted back onto it: {', '.join(restarted)}"
        else:
            said += "; no webapp had been restarted"
    if problems:
        said += "\nTHE UNDOING FAILED TOO, check these hosts by hand:\n  " + "\n  ".join(problems)
    return said


def _ended(report, comment, failed=None):
    report["comment"] = comment
    if failed is not None:
        report["failed"] = {"host": failed.host, "phase": failed.phase, "error": failed.error}
        if failed.kind:
            report["failed"]["kind"] = failed.kind
    if report["result"] is False:
        __context__["retcode"] = 1
    return report
