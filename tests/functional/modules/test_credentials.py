"""
A ``repo_url`` with a token, as a hosting service hands one out: the deploy really
fetches over HTTP from a server that refuses anyone without it (git's own
``http-backend`` behind Basic authentication, on 127.0.0.1), and the token is told
nowhere a user or another account can read: not in any function's answer, error,
manifest or history line (``****`` stands for it), while the cache's ``.git/config``,
where git needs it, is its owner's alone (0600).
"""

import json
import stat

import pytest
from salt.exceptions import CommandExecutionError

import make_repo as sample
from support.git_http import GitHTTP
from support.helpers import env_root

ENV = "staging"
TOKEN = "tok-3f9a1c0d5e7b2a48"

pytestmark = pytest.mark.skipif(not GitHTTP.available(), reason="git's http-backend is not installed")


@pytest.fixture
def server(origin, tmp_path):
    with GitHTTP.serving(origin, tmp_path / "git", "deploy", TOKEN) as srv:
        yield srv


def test_a_token_in_repo_url_fetches_and_is_told_nowhere(vumi, server, base_dir):
    url = f"http://deploy:{TOKEN}@127.0.0.1:{server.port}/app.git"
    res = vumi.deploy(ENV, repo_url=url)
    assert res["revision"] == sample.git(server.root + "/app.git", "rev-parse", ENV)
    assert [r for r in server.requests if r[2]], server.requests  # fetched through the server, with the token
    said = {
        "deploy": res,
        "settings": vumi.settings(ENV, repo_url=url),
        "current": vumi.current(ENV, repo_url=url),
        "releases": vumi.releases(ENV, repo_url=url),
        "check": vumi.check(ENV, repo_url=url),
    }
    root = env_root(base_dir)
    files = {name: (root / name).read_text() for name in ("history.log", f"releases/{res['release']}/release.json")}
    leaks = [name for name, text in [*((k, json.dumps(v)) for k, v in said.items()), *files.items()] if TOKEN in text]
    assert leaks == [], leaks
    assert f"http://deploy:****@127.0.0.1:{server.port}/app.git" == said["settings"]["repo_url"]  # masked, not lost
    config = root / "shared" / "repositories" / "vumi" / ".git" / "config"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and TOKEN in config.read_text()  # where git needs it

    # a wrong token: the server refuses it, the deploy fails and says so, telling neither token
    with pytest.raises(CommandExecutionError, match=r"stage 'fetch'") as exc:
        vumi.deploy(ENV, repo_url=url.replace(TOKEN, "not-the-token"))
    assert TOKEN not in str(exc.value) and "not-the-token" not in str(exc.value), exc.value
    assert [r for r in server.requests if not r[2]], "the server never refused anything"
