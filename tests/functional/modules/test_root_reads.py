"""
Root reads nothing the deploy user can write: the user plants, in place of each file
root used to read (the current release's ``release.json``, ``LOCKED``, ``HELD``,
``history.log``, the requirements file and a ``-r`` include of it), a FIFO (an open
that waits for ever), a link to ``/dev/zero`` (a read that never ends), a link to a
root-only file of secrets, and a 6 GiB sparse file. With each trap in place, what an
operator runs (``vumi.current``, ``releases``, ``summary``, ``check``, ``locked``,
``held``, ``rollback``, ``state.apply vumi``) returns in bounded time with a clear
error or the file ignored, says nothing of the secret, and root's ``salt-call`` stays
small; the other environment's ``state.apply`` runs meanwhile, unaffected. Then
strace lists every file in the user's tree that root's own processes opened (to read
or to write) during ``state.apply`` (a no-op and a deploy), ``rollback``, ``cleanup``
and ``webapp_status``: none.
"""

import contextlib
import datetime
import json
import os
import signal
import subprocess
import time

import pytest

from support.failures import SALT_CALL, free_port, wait_for
from support.privileges import (  # noqa: F401  (fixtures)
    ENV,
    SKIPS,
    STRACE,
    as_user,
    bounded,
    commit,
    peak_rss_mb,
    pillar_config,
    root_calls_in,
    run_salt_call,
    site,
    top,
    traced,
    user,
)

pytestmark = SKIPS

SECRET = {"aws_key": "AKIA-VICTIM-0123456789", "db_password": "hunter2-victim"}
OTHER = "production"
#: a read call with every trap: well under this (a FIFO used to hang it for ever)
BOUND = 10
#: a state.apply, which may deploy (a trap makes the current release look incomplete)
APPLY_BOUND = 120
#: root's salt-call at its peak: Salt itself is ~100 MB; a 6 GiB read would be far above
RSS_LIMIT_MB = 200


@pytest.fixture(scope="module")
def secret(top):
    path = top / "victims" / "secrets.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(SECRET))
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="module")
def conf(site, top):
    """salt-call with pillar: staging (the trapped one) and production (the other), both the user's."""
    settings = dict(site.settings, health_check=False)
    return pillar_config(top, settings, name="reads", envs={ENV: {}, OTHER: {}})


def leaked(text):
    return [value for value in SECRET.values() if value in text]


def places(site):
    """Where the user plants a trap, and how to make it a place at all (the include)."""
    release = os.path.realpath(site.root / "current")
    code = os.path.join(release, "vumi")
    return {
        "release.json": os.path.join(release, "release.json"),
        "LOCKED": str(site.root / "LOCKED"),
        "HELD": str(site.root / "HELD"),
        "history.log": str(site.root / "history.log"),
        "requirements": os.path.join(code, "config", "requirements.pip"),
        "include": os.path.join(code, "config", "extra.txt"),
    }


def plant(user, kind, path, secret):
    made = {
        "fifo": ("mkfifo", path),
        "zero": ("ln", "-s", "/dev/zero", path),
        "secret": ("ln", "-s", str(secret), path),
        "sparse": ("truncate", "-s", "6G", path),
    }[kind]
    res = as_user(user, *made)
    assert res.returncode == 0, res.stderr


@contextlib.contextmanager
def trapped(site, user, place, kind, secret):
    path = places(site)[place]
    requirements = places(site)["requirements"]
    aside = path + ".aside"
    if os.path.lexists(path):
        assert as_user(user, "mv", path, aside).returncode == 0
    if place == "include":
        as_user(user, "cp", requirements, requirements + ".aside")
        assert as_user(user, "sh", "-c", f"echo '-r extra.txt' >> {requirements}").returncode == 0
    plant(user, kind, path, secret)
    try:
        yield path
    finally:
        as_user(user, "rm", "-f", path)
        if os.path.lexists(aside):
            as_user(user, "mv", aside, path)
        if place == "include" and os.path.lexists(requirements + ".aside"):
            as_user(user, "mv", requirements + ".aside", requirements)


def calls(vumi):
    """What an operator runs that reads the tree: each returns or raises; what it said, as text."""
    found = {}
    for name, call in (
        ("current", lambda: vumi.current(ENV)),
        ("releases", lambda: vumi.releases(ENV)),
        ("summary", lambda: vumi.summary()),
        ("check", lambda: vumi.check(ENV)),
        ("locked", lambda: vumi.locked(ENV)),
        ("held", lambda: vumi.held(ENV)),
    ):
        started = time.monotonic()
        with bounded(BOUND, name):
            try:
                said = json.dumps(call(), default=str)
            except TimeoutError:
                raise
            except Exception as exc:  # pylint: disable=broad-except  (a clear error is an answer)
                said = f"{type(exc).__name__}: {exc}"
        found[name] = (said, time.monotonic() - started)
    return found


def roll_back_and_forth(vumi, before):
    """``vumi.rollback`` (no restart), then back to ``before`` by name: what each said."""
    said = []
    for kwargs in ({}, {"release": before}):
        with bounded(BOUND, "rollback"):
            try:
                said.append(json.dumps(vumi.rollback(ENV, restart=False, **kwargs)))
            except TimeoutError:
                raise
            except Exception as exc:  # pylint: disable=broad-except  (a clear error is an answer)
                said.append(f"{type(exc).__name__}: {exc}")
    return " ".join(said)


def apply(conf, env, *more, measure=None):
    res = run_salt_call(conf, "state.apply", "vumi", f'pillar={{"branch": "{env}"}}', *more,
                        timeout=APPLY_BOUND, measure=measure)  # fmt: skip
    assert isinstance(res.data, dict) and "Traceback" not in res.text, res.text[-3000:]
    return res


def test_each_trap_is_read_in_bounded_time_and_tells_no_secret(site, user, top, secret, conf):
    vumi = site.vumi
    assert apply(conf, OTHER).returncode == 0
    rows, worst_rss, slowest = [], 0.0, 0.0
    for place in places(site):
        for kind in ("fifo", "zero", "secret", "sparse"):
            before = os.path.basename(os.path.realpath(site.root / "current"))
            rss = top / f"rss-{place}-{kind}"
            with trapped(site, user, place, kind, secret):
                said = calls(vumi)
                text = " ".join(s for s, _ in said.values()) + roll_back_and_forth(vumi, before)
                started = time.monotonic()
                applied = apply(conf, ENV, measure=rss)
                took = time.monotonic() - started
                text += applied.text
                if kind == "secret":  # what a dry run says of the current release
                    text += apply(conf, ENV, "test=True").text
                if kind == "fifo":  # the other environment converges while the trap is there
                    other = apply(conf, OTHER)
                    assert other.returncode == 0, (place, kind, other.text[-2000:])
            assert not leaked(text), (place, kind, leaked(text))
            worst_rss = max(worst_rss, peak_rss_mb(rss))
            slowest = max(slowest, max(t for _, t in said.values()))
            rows.append(f"{place}/{kind}: state.apply rc {applied.returncode} in {took:.1f}s, "
                        f"root's peak RSS {peak_rss_mb(rss):.0f} MB")  # fmt: skip
    print("\n[root reads] " + "\n[root reads] ".join(rows))
    grain = run_salt_call(conf, "grains.item", "vumi")
    assert grain.returncode == 0 and not leaked(grain.text), grain.text
    assert grain.data["vumi"][ENV]["release"] == os.path.basename(os.path.realpath(site.root / "current")), grain.data
    for env, entry in grain.data["vumi"].items():
        assert entry["revision"] is None or len(entry["revision"]) == 40, (env, entry)
    print(f"[root reads] slowest read call {slowest:.2f}s; root's peak RSS {worst_rss:.0f} MB over {len(rows)} traps")
    assert slowest < BOUND and worst_rss < RSS_LIMIT_MB


def test_a_manifest_with_a_huge_revision_is_not_a_manifest(site, user, conf):
    release = os.path.realpath(site.root / "current")
    manifest = os.path.join(release, "release.json")
    saved = open(manifest, encoding="utf-8").read()  # pylint: disable=consider-using-with
    bloated = dict(json.loads(saved), revision={f"k{i}": "v" * 100 for i in range(1000)})
    assert as_user(user, "sh", "-c", f"cat > {manifest}", input=json.dumps(bloated)).returncode == 0
    try:
        assert site.vumi.current(ENV).get("revision") is None  # not a commit id: not taken
        listed = {r["release"]: r for r in site.vumi.releases(ENV)}
        assert listed[os.path.basename(release)]["state"] == "incomplete"
    finally:
        as_user(user, "sh", "-c", f"cat > {manifest}", input=saved)
    assert len(site.vumi.current(ENV)["revision"]) == 40


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (.ci/run installs Debian's)")
def test_root_opens_no_file_of_the_users_tree(site, user, top, conf):
    """Every command the README says runs as the deploy user, traced: root opens no file of the tree."""
    port = free_port()
    counts = {}
    commit(site, user, "NEWS", "traced reads\n", "a commit to deploy")
    own = {"ports": [port], "health_check": True, "hooks": {"before_publish": ["./manage.py migrate --noinput"]}}
    pillar = json.dumps({"branch": ENV, "vumi": {"environments": {ENV: own}}})
    # a fleet deploy's release name, later than any this test's deploys take (they are named after it)
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    later, then = (when.strftime("%Y%m%d_%H%M%S") for when in (soon, soon + datetime.timedelta(minutes=1)))
    steps = [
        ("state.apply (deploy)", ["state.apply", "vumi", f"pillar={pillar}"]),
        ("state.apply (no-op)", ["state.apply", "vumi", f"pillar={pillar}"]),
        ("webapp_status", ["vumi.webapp_status", ENV, f"ports=[{port}]"]),
        ("restart_webapp", ["vumi.restart_webapp", ENV, str(port), f"ports=[{port}]"]),
        ("execute", ["vumi.execute", ENV, "ls config"]),
        ("managepy", ["vumi.managepy", ENV, "check"]),
        ("update", ["vumi.update", ENV]),
        ("rollback", ["vumi.rollback", ENV, f"ports=[{port}]"]),
        ("prepare", ["vumi.prepare", ENV, f"release={later}", "health_check=True", f"ports=[{port}]"]),
        ("publish", ["vumi.publish", ENV, later]),
        ("revert", ["vumi.revert", ENV, later]),
        ("prepare (to discard)", ["vumi.prepare", ENV, f"release={then}"]),
        ("discard", ["vumi.discard", ENV, then]),
        ("lock", ["vumi.lock", ENV, "reason=traced"]),
        ("unlock", ["vumi.unlock", ENV]),
        ("cleanup", ["vumi.cleanup", ENV, "limit=1"]),
        ("current", ["vumi.current", ENV]),
        ("releases", ["vumi.releases", ENV]),
        ("check", ["vumi.check", ENV]),
        ("summary", ["vumi.summary"]),
    ]
    for index, (name, args) in enumerate(steps):
        if name == "update":
            commit(site, user, "NEWS", "an update\n", "a commit to update to")
        log = top / f"strace-reads-{index}.log"
        proc = traced(conf, log, *args)
        assert proc.returncode == 0, (name, proc.stdout[-2000:], proc.stderr[-2000:])
        counts[name] = root_calls_in(log.read_text(), site.root)
    # crash recovery: a deploy killed in its stages, then the next one (which cleans up) traced
    commit(site, user, "NEWS", "killed\n", "a commit whose deploy is killed")
    killed = subprocess.Popen([str(SALT_CALL), "--local", "-c", str(conf), "vumi.deploy", ENV],  # pylint: disable=consider-using-with
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    assert wait_for(lambda: any((site.root / "releases").glob(f"{time.strftime('%Y')}*/vumi/manage.py"))
                    and len(list((site.root / "releases").iterdir())) > 1, timeout=60)  # fmt: skip
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    log = top / "strace-reads-recovery.log"
    proc = traced(conf, log, "vumi.deploy", ENV)
    assert proc.returncode == 0, proc.stdout[-2000:]
    counts["deploy after a kill"] = root_calls_in(log.read_text(), site.root)
    run_salt_call(conf, "vumi.stop_webapp", ENV, str(port), f"ports=[{port}]")
    print("\n[root reads] root's opens of files in the user's tree (reads, writes): "
          + ", ".join(f"{k} {len(v['reads'])}, {len(v['writes'])}" for k, v in counts.items()))  # fmt: skip
    assert {k: v["reads"] + v["writes"] for k, v in counts.items()} == {k: [] for k in counts}, counts
