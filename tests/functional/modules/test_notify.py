"""
Pillar ``notify``: webhooks POSTed with Salt's ``http.query`` on deploy start,
success and failure and on rollbacks, to a receiver this test runs on 127.0.0.1.
A receiver that is down never fails the deploy; the log says why.
"""

import socket
import time

import pytest
from salt.exceptions import CommandExecutionError

import make_repo as sample
import vumi_notify
from support.helpers import Warnings
from support.webhooks import receiver

ENV = "staging"


def test_a_deploy_a_failure_and_a_rollback_reach_the_webhook_in_order(vumi, repo, minion_opts):
    with receiver() as hook:
        notify = [{"url": f"{hook.url}/all"},
                  {"url": f"{hook.url}/chat", "events": ["deploy/failure"], "body": {"text": "{host}: {error}"}}]  # fmt: skip
        first = vumi.deploy(ENV, notify=notify)
        sample.commit_file(repo, ENV, "CHANGES", "second\n", "The second deploy")
        second = vumi.deploy(ENV, notify=notify)
        with pytest.raises(CommandExecutionError):
            vumi.deploy(ENV, notify=notify, hooks={"before_publish": ["echo nope; exit 3"]})
        vumi.rollback(ENV, restart=False, notify=notify)
    got = [(g["path"], g["body"]["event"] if "event" in g["body"] else "text") for g in hook.got]
    assert got == [("/all", "deploy/start"), ("/all", "deploy/success"), ("/all", "deploy/start"),
                   ("/all", "deploy/success"), ("/all", "deploy/start"), ("/all", "deploy/failure"),
                   ("/chat", "text"), ("/all", "rollback")], got  # fmt: skip
    bodies = [g["body"] for g in hook.got]
    success = bodies[3]
    assert success["release"] == second["release"] and success["subject"] == "The second deploy", success
    assert success["revision"] == second["revision"] and success["host"] == minion_opts["id"]
    assert success["outcome"] == f"deployed (was {first['release']})" and success["duration"] > 0
    assert "exit 3" in bodies[5]["error"] and bodies[5]["outcome"] == "failed at hooks"
    assert bodies[6]["text"].startswith(f"{minion_opts['id']}: deploy of staging failed at stage 'hooks'")
    assert bodies[7]["release"] == first["release"] and bodies[7]["outcome"] == f"rolled back (was {second['release']})"
    print("\nwebhook bodies:", *bodies, sep="\n  ")


def test_a_receiver_that_is_down_does_not_fail_the_deploy(vumi, deploy_user):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    records = Warnings()
    vumi_notify.log.addHandler(records)
    try:
        started = time.monotonic()
        deployed = vumi.deploy(ENV, notify=[{"url": f"http://hook:s3cret@127.0.0.1:{port}/down", "timeout": 2}])
        took = time.monotonic() - started
    finally:
        vumi_notify.log.removeHandler(records)
    assert deployed["release"]
    print(f"\na receiver that is down ({took:.1f}s):\n{records.text}")
    if deploy_user is not None:
        return  # the deploy ran in the deploy user's process: its log is that process's
    assert f"vumi notify deploy/start: http://hook:****@127.0.0.1:{port}/down:" in records.text
    assert "(the deploy goes on)" in records.text and "s3cret" not in records.text
