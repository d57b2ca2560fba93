"""The shipped reactor (salt/vumi/reactor/chat.sls) rendered as Salt's reactor renders it, for the events it is for."""

import json
import pathlib

import pytest
import salt.config
import salt.utils.templates
import yaml

SLS = pathlib.Path(__file__).resolve().parents[2] / "salt" / "vumi" / "reactor" / "chat.sls"


def render(tag, data, url="http://127.0.0.1:9/hook"):
    opts = dict(salt.config.DEFAULT_MASTER_OPTS, vumi_reactor_chat_url=url)
    out = salt.utils.templates.render_jinja_tmpl(SLS.read_text(), {"opts": opts, "tag": tag, "data": data, "salt": {},
                                                                   "grains": {}, "pillar": {}, "saltenv": "base",
                                                                   "sls": ""})  # fmt: skip
    return yaml.safe_load(out)


@pytest.mark.parametrize(("tag", "data", "text"), [
    ("vumi/fleet/staging/end", {"branch": "staging", "release": "R", "hosts": ["a", "b"], "result": False},
     "fleet deploy of staging release R to a, b: FAILED"),
    ("vumi/deploy/staging/hooks", {"id": "web-1", "data": {"env": "staging", "stage": "hooks", "outcome": "failed",
                                                           "error": "exit 3"}},
     "web-1: deploy of staging failed at hooks: exit 3"),
])  # fmt: skip
def test_a_fleet_run_or_a_failed_stage_is_posted(tag, data, text):
    (state,) = render(tag, data).values()
    args = {k: v for arg in state["runner.http.query"][0]["args"] for k, v in arg.items()}
    assert args["url"] == "http://127.0.0.1:9/hook" and args["method"] == "POST"
    assert json.loads(args["data"]) == {"text": text}


def test_a_stage_that_passed_or_no_url_posts_nothing():
    assert render("vumi/deploy/staging/fetch", {"id": "web-1", "data": {"stage": "fetch", "outcome": "done"}}) is None
    assert render("vumi/fleet/staging/end", {"result": True}, url=None) is None
