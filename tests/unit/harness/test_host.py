"""
The guard every test runs under (tests/conftest.py, tests/support/host.py): what it
records, and that it names what a test planted on the host. Here on folders of the
test's own, standing in for /etc/nginx, /etc/passwd and /run.
"""

import os

from support import host


def test_the_guard_names_what_was_made_changed_or_removed(tmp_path):
    etc, run = tmp_path / "etc-nginx", tmp_path / "run"
    etc.mkdir()
    run.mkdir()
    (etc / "nginx.conf").write_text("events {}\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\n")

    def now():
        return host.state(trees=[str(etc)], files=[str(passwd)], run=str(run))

    before = now()
    assert host.changes(before, now()) == []
    (etc / "sites-enabled").mkdir()
    (etc / "sites-enabled" / "vumi-staging.conf").write_text("server {}\n")
    with open(passwd, "a", encoding="utf-8") as fh:
        fh.write("vumi:x:999:999::/home/vumi:/bin/sh\n")
    (run / "supervisord.pid").write_text("123\n")
    (etc / "nginx.conf").write_text("events { }\n")
    os.utime(etc / "nginx.conf", ns=(1, 1))
    assert host.changes(before, now()) == [
        f"changed {etc}/nginx.conf",
        f"made {etc}/sites-enabled",
        f"made {etc}/sites-enabled/vumi-staging.conf",
        f"changed {passwd}",
        f"made {run}/supervisord.pid",
    ]


def test_a_throw_away_user_of_the_tests_is_not_a_change_but_any_other_user_is(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\n")

    def now():
        return host.state(trees=[], files=[str(passwd)], run=str(tmp_path / "none"))

    before = now()
    passwd.write_text("root:x:0:0::/root:/bin/sh\nvumipriv-1a2b3c:x:998:998::/tmp/x:/bin/sh\n")
    assert host.changes(before, now()) == []  # another worker's attack test: its fixture removes it
    passwd.write_text("root:x:0:0::/root:/bin/sh\ndeploy:x:997:997::/home/deploy:/bin/sh\n")
    assert host.changes(before, now()) == [f"changed {passwd}"]


def test_what_is_made_and_removed_again_leaves_no_trace(tmp_path):
    etc = tmp_path / "etc-cron.d"
    etc.mkdir()
    before = host.state(trees=[str(etc)], files=[], run=str(tmp_path / "none"))
    (etc / "vumi-probe").write_text("* * * * * root true\n")
    (etc / "vumi-probe").unlink()
    assert host.changes(before, host.state(trees=[str(etc)], files=[], run=str(tmp_path / "none"))) == []


def test_the_real_host_is_watched_where_the_bundle_writes_by_default():
    for path in ("/var/praekelt", "/etc/supervisor", "/etc/nginx", "/etc/cron.d", "/var/spool/cron"):
        assert path in host.TREES
    for path in ("/etc/passwd", "/etc/group", "/var/lib/dpkg/status", "/etc/crontab"):
        assert path in host.FILES
