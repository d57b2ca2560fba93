"""
The whole service, not one webapp: process types beside the webapp (pillar ``processes``)
and scheduled jobs (pillar ``cron``), deployed as a throw-away user through ``state.apply
vumi``, with a real supervisord (the test's) and the user's real crontab (Debian's
``crontab``; no cron daemon runs).

A worker follows every release that goes live (a deploy, ``vumi.rollback``,
``vumi.update``): the release it runs is read from its working directory (the kernel's
word). supervisor brings a ``kill -9``-ed one back with no Salt run. The crontab holds the
job's entry, and loses it when pillar drops it; the user's own entries are left alone.
"""

import os
import signal
import subprocess
import time

import pytest

import make_repo as sample
from support.helpers import clone_origin, http_get, loaders_for, settings_pillar
from support.privileges import SKIPS
from support.users import PYTHON, give, reachable_dir, throwaway_user

pytestmark = [*SKIPS, pytest.mark.skipif(not os.path.exists("/usr/bin/crontab"), reason="needs Debian's cron")]

ENV = "staging"
# a real loop, as a worker is: it runs until supervisor stops it
LOOP = "{venv}/bin/python -c 'import itertools, time; [time.sleep(0.2) for _ in itertools.count()]'"
OWN_ENTRY = "17 4 * * * echo the user's own job"


def crontab(user):
    proc = subprocess.run(["crontab", "-l", "-u", user.pw_name], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


@pytest.fixture
def service(minion_opts, origin, supervisor, free_port):
    with reachable_dir("vumi-procs-") as top, throwaway_user() as user:
        repo = give(clone_origin(origin, top / "app.git"), user)
        base_dir = top / "srv"
        base_dir.mkdir()
        subprocess.run(["crontab", "-u", user.pw_name, "-"], input=OWN_ENTRY + "\n", text=True, check=True)
        port = free_port()
        vumi = {
            "base_dir": str(base_dir), "supervisor": supervisor.settings(), "python": PYTHON, "repo_url": str(repo),
            "user": user.pw_name, "start_timeout": 20, "stop_timeout": 3, "ports": [port],
            "processes": {"worker": {"command": LOOP, "numprocs": 2, "stop_timeout": 2}, "beat": LOOP},
            "cron": {"clearsessions": {"schedule": "0 3 * * *", "command": "{venv}/bin/python manage.py showsettings"}},
        }  # fmt: skip

        def apply(test=False, **changes):
            vumi.update(changes)
            with loaders_for(minion_opts, {}, settings_pillar(top / f"pillar-{time.monotonic_ns()}", vumi)) as loaders:
                ret = loaders.modules.state.apply("vumi", pillar={"branch": ENV}, test=test)
                assert not ret.errors, ret.errors
                failed = {state.id: state.comment for state in ret if state.result is False}
                assert not failed, failed
                return ret, loaders.modules.vumi

        try:
            yield apply, repo, user, port
        finally:
            supervisor.clear()
            subprocess.run(["crontab", "-r", "-u", user.pw_name], capture_output=True, check=False)
            assert not os.path.exists(f"/var/spool/cron/crontabs/{user.pw_name}")  # the host guard leaves it to us


def workers(vumi):
    rows = vumi.process_status(ENV)
    assert set(rows) == {"worker-0", "worker-1", "beat"}, rows
    return rows


def test_workers_follow_every_release_and_cron_jobs_follow_pillar(service):
    apply, repo, user, port = service
    ret, vumi = apply()
    release = vumi.current(ENV)["release"]
    rows = workers(vumi)
    assert all(r["running"] and r["release"] == release and r["current"] for r in rows.values()), rows
    assert http_get(port)[0] == 200

    # the job's entry in the user's crontab, beside the user's own
    tab = crontab(user)
    assert OWN_ENTRY in tab and "SALT_CRON_IDENTIFIER:vumi:vumi:staging:clearsessions" in tab, tab
    (entry,) = [line for line in tab.splitlines() if line.startswith("0 3 * * * ")]
    assert "/current" in entry and "manage.py showsettings" in entry and "cron.clearsessions.log" in entry
    # what cron would run, run as the user now: the command in current, with the environment's variables
    job = entry.split(" ", 5)[5].replace("\\%", "%")
    subprocess.run(["runuser", "-u", user.pw_name, "--", "/bin/sh", "-c", job], check=True, timeout=60)
    log = vumi.paths(ENV)["shared"] + "/logs/cron.clearsessions.log"
    assert "DJANGO_SETTINGS_MODULE" in open(log, encoding="utf-8").read() or os.path.getsize(log) > 0

    # kill -9: supervisor starts it again, no Salt run
    killed = rows["worker-0"]["pid"]
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = vumi.process_status(ENV)["worker-0"]
        if again["running"] and again["pid"] not in (None, killed) and again["current"]:
            break
        time.sleep(0.1)
    assert again["running"] and again["pid"] != killed and again["current"], again
    print(f"\n[processes] worker-0 back on the current release {5 - (deadline - time.monotonic()):.2f}s after kill -9")

    # a code change: the deploy restarts the webapp, then the workers, onto the new release
    sample.commit_file(repo, ENV, "NEWS", "one\n", "a code change")
    ret, vumi = apply(test=True)  # predicted first
    predicted = {state.id: state for state in ret}[f"vumi-{ENV}-webapp"]
    assert predicted.changes["processes"]["new"] == ["beat", "worker"], predicted.raw
    assert vumi.current(ENV)["release"] == release
    ret, vumi = apply()
    second = vumi.current(ENV)["release"]
    assert second != release
    states = {state.id: state for state in ret}
    assert states[f"vumi-{ENV}-webapp"].changes["processes"]["new"] == ["worker", "beat"], states
    assert all(r["release"] == second for r in workers(vumi).values())

    # rollback: onto the release rolled back to
    vumi.rollback(ENV)
    assert all(r["release"] == release and r["running"] for r in workers(vumi).values())

    # update: the new commit goes live without hooks; the workers follow it
    sample.commit_file(repo, ENV, "NEWS", "two\n", "a quick fix")
    updated = vumi.update(ENV)
    assert updated["processes_restarted"] == ["worker", "beat"]
    assert all(r["release"] == updated["release"] for r in workers(vumi).values())

    # pillar drops the job: its entry leaves the crontab, the user's own stays
    ret, vumi = apply(cron={})
    cron_state = {state.id: state for state in ret}[f"vumi-{ENV}-cron"]
    assert cron_state.changes["clearsessions"]["new"] is None, cron_state.changes
    tab = crontab(user)
    assert OWN_ENTRY in tab and "clearsessions" not in tab, tab

    # and nothing more to do
    ret, _ = apply()
    changed = {state.id: state.changes for state in ret if state.changes}
    assert not changed, changed


def test_remove_takes_the_workers_and_the_cron_entries_with_the_environment(service, supervisor):
    apply, _, user, _ = service
    _, vumi = apply()
    assert "clearsessions" in crontab(user)
    planned = vumi.remove(ENV, test=True)["would_remove"]
    assert f"cron: {user.pw_name}'s clearsessions" in planned, planned
    assert f"supervisor: vumi-{ENV}-worker:vumi-{ENV}-worker-1" in planned, planned
    assert "clearsessions" in crontab(user) and vumi.process_status(ENV)["beat"]["running"]  # test: nothing gone
    removed = vumi.remove(ENV)["removed"]
    assert removed == planned
    assert not [name for name in supervisor.processes() if name.startswith(f"vumi-{ENV}-")]
    tab = crontab(user)
    assert OWN_ENTRY in tab and "vumi:vumi:staging" not in tab, tab


CELERY_APP = '''"""A celery app for the test: the broker is a folder (kombu's filesystem transport)."""
import os

from celery import Celery

app = Celery("celerytasks", broker="filesystem://")
queue = os.path.realpath("tmp")  # shared/tmp, linked into every release: the same folder for every release
app.conf.broker_transport_options = {"data_folder_in": queue, "data_folder_out": queue}
app.conf.broker_connection_retry_on_startup = True


@app.task
def record(path):
    """Append the folder this worker runs in: which release took the task."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(os.path.realpath(os.getcwd()) + "\\n")
'''


def test_a_real_celery_worker_takes_tasks_and_follows_a_deploy(service):
    apply, repo, user, _ = service
    sample.git(repo, "checkout", "-q", ENV)
    requirements = (repo / "config" / "requirements.pip").read_text()
    sample.commit_file(repo, ENV, "config/requirements.pip", requirements + "celery==5.7.0\n", "celery")
    sample.commit_file(repo, ENV, "celerytasks.py", CELERY_APP, "a celery app")
    _, vumi = apply(
        processes={
            "worker": None,
            "beat": None,
            "celery": "{venv}/bin/celery -A celerytasks worker --pool solo -l info",
        },
        cron={},
    )
    paths = vumi.paths(ENV)
    out = os.path.join(paths["shared"], "tmp", "record.log")

    def send():
        """A task sent from the current release, as the deploy user; the release that ran it."""
        sent = subprocess.run(
            ["runuser", "-u", user.pw_name, "--", os.path.join(paths["current"], "ve", "bin", "python"), "-c",
             f"import celerytasks; celerytasks.record.delay({out!r})"],
            cwd=os.path.join(paths["current"], "vumi"), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = open(out, encoding="utf-8").read().split() if os.path.exists(out) else []
            if len(lines) > send.count:
                send.count += 1
                return lines[-1]
            time.sleep(0.1)
        raise AssertionError(f"no worker took the task; its log: {vumi.paths(ENV)['shared']}/logs/process.celery.log")

    send.count = 0
    first = vumi.current(ENV)["release"]
    assert f"/releases/{first}" in send()
    (row,) = vumi.process_status(ENV).values()
    assert row["process"] == "celery" and row["release"] == first

    sample.commit_file(repo, ENV, "NEWS", "celery\n", "a code change")
    _, vumi = apply()
    second = vumi.current(ENV)["release"]
    assert second != first and f"/releases/{second}" in send()  # the worker was restarted onto it
