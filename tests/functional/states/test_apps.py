"""
Two apps on one host, each with its own ``app``, ``repo_url``, deploy user, ports and
settings, each with staging and production, through one ``state.apply vumi`` with no
``branch`` (what ``state.highstate`` runs): the first app is pillar ``vumi`` itself, the
second ``vumi:apps:blog``, whose environments are named ``blog:staging`` and
``blog:production``. The first app's own ``env``, ``settings`` and ``hooks`` do not reach
the second's environments; only the host's keys (``base_dir``, ``supervisor``, ``python``)
are shared. Each app's user is a throw-away one.
"""

import pytest

import make_repo as sample
from support.helpers import clone_origin, http_get, loaders_for, settings_pillar
from support.privileges import SKIPS
from support.users import PYTHON, give, reachable_dir, throwaway_user

pytestmark = SKIPS

ENVS = ("staging", "production")


@pytest.fixture
def host(minion_opts, origin, supervisor, free_port):
    with reachable_dir("vumi-apps-") as top, throwaway_user() as hc_user, throwaway_user() as blog_user:
        hc_repo = give(clone_origin(origin, top / "hc.git"), hc_user)
        blog_repo = clone_origin(origin, top / "blog.git")
        for env in ENVS:  # the second app's own code: another commit on each branch
            sample.commit_file(blog_repo, env, "BLOG", f"blog {env}\n", f"the blog's {env}")
        give(blog_repo, blog_user)
        base_dir = top / "srv"
        base_dir.mkdir()
        ports = {env: [free_port(), free_port()] for env in (*ENVS, *(f"blog:{e}" for e in ENVS))}
        vumi = {
            "base_dir": str(base_dir), "supervisor": supervisor.settings(), "python": PYTHON,
            "start_timeout": 20, "stop_timeout": 5,
            "deploy": [*ENVS, *(f"blog:{e}" for e in ENVS)],
            # the first app: pillar vumi itself, with its own env, settings and hooks
            "app": "hc", "repo_url": str(hc_repo), "user": hc_user.pw_name,
            "env": {"HC_ONLY": "1"}, "settings": {"GREETING": "hello from hc"}, "settings_extends": "environments.default",
            "hooks": {"before_publish": ["test \"$HC_ONLY\" = 1"]},
            "environments": {env: {"ports": ports[env]} for env in ENVS},
            "apps": {
                "blog": {
                    "repo_url": str(blog_repo), "user": blog_user.pw_name, "start_timeout": 20,
                    "hooks": {"before_publish": ["test -z \"$HC_ONLY\""]},  # hc's env does not reach it
                    "environments": {env: {"ports": ports[f"blog:{env}"]} for env in ENVS},
                },
            },
        }  # fmt: skip
        with loaders_for(minion_opts, {}, settings_pillar(top / "pillar", vumi)) as loaders:
            yield loaders, ports, {"hc": hc_repo, "blog": blog_repo}, base_dir, {"hc": hc_user, "blog": blog_user}
        supervisor.clear()


def test_two_apps_with_two_environments_each_converge_in_one_run(host):
    loaders, ports, repos, base_dir, users = host
    ret = loaders.modules.state.apply("vumi")
    assert not ret.errors, ret.errors
    failed = {state.id: state.comment for state in ret if state.result is not True}
    assert not failed, failed

    # four trees, each its app's user's, under one base_dir
    for app in ("hc", "blog"):
        for env in ENVS:
            root = base_dir / app / env
            assert root.is_dir() and root.stat().st_uid == users[app].pw_uid, root
    assert sorted(p.name for p in base_dir.iterdir()) == ["blog", "hc"]

    # eight ports, each serving its own app's code at its branch's tip
    for name, env_ports in ports.items():
        app, env = name.split(":") if ":" in name else ("hc", name)
        tip = sample.git(repos[app], "rev-parse", env)
        for port in env_ports:
            status, body = http_get(port)
            assert status == 200 and body["revision"] == tip and body["env"] == env, (name, port, body)
            # hc's settings file (from pillar) is hc's alone: the blog runs its repository's own
            assert body["greeting"] == ("hello from hc" if app == "hc" else f"hello from {env}"), (name, body)

    # what the module says of them, by name
    vumi = loaders.modules.vumi
    assert vumi.settings("blog:staging")["app"] == "blog" and vumi.settings("blog:staging")["env"] == {}
    assert vumi.environments() == sorted(["staging", "production", "blog:staging", "blog:production"])

    # again: nothing to do anywhere
    again = loaders.modules.state.apply("vumi")
    changed = {state.id: state.changes for state in again if state.changes}
    assert not changed and all(state.result is True for state in again), changed
