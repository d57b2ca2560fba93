"""Pillar ``notify``: its webhooks validated (a typo named), their bodies rendered, a failing one only logged."""

import json

import pytest
from salt.exceptions import SaltInvocationError

import vumi_notify
import vumi_settings
from support.helpers import Warnings


def test_a_url_alone_gets_the_defaults():
    (hook,) = vumi_settings.notify(["https://hooks.example.com/T0/B0/secret"])
    assert hook == {"url": "https://hooks.example.com/T0/B0/secret", "events": ["deploy/*", "rollback", "fleet/start",
                    "fleet/end"], "body": None, "headers": {}, "timeout": 5.0}  # fmt: skip


@pytest.mark.parametrize(("hooks", "said"), [
    ([{"url": "https://x.example", "event": ["rollback"]}], "unknown key notify:0:event; did you mean events?"),
    ([{"url": "https://x.example", "events": ["deploy/sucess"]}], "no such event; did you mean deploy/success?"),
    ([{"url": "https://x.example", "body": "{host} {relase}"}], "{relase} is not a field; did you mean {release}?"),
    ([{"url": "ftp://x.example"}], "an http:// or https:// URL"),
    ([{"url": "https://u:hunter2@x.example bad"}], "invalid notify:0:url 'https://u:****@x.example bad'"),
    ([{"url": "https://x.example", "timeout": 0}], "invalid notify:0:timeout 0"),
    ({"url": "https://x.example"}, "a list of webhooks"),
])  # fmt: skip
def test_a_bad_webhook_is_named(hooks, said):
    with pytest.raises(SaltInvocationError) as exc:
        vumi_settings.notify(hooks)
    assert said in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_bodies_a_template_a_mapping_of_them_or_every_field():
    fields = {"event": "deploy/success", "host": "web-1", "release": "20261201_000000", "error": None}
    assert vumi_notify.render("{host} deployed {release}{error}", fields) == (
        "web-1 deployed 20261201_000000", "text/plain; charset=utf-8")  # fmt: skip
    body, kind = vumi_notify.render({"text": "{event} on {host}"}, fields)
    assert json.loads(body) == {"text": "deploy/success on web-1"} and kind == "application/json"
    body, _ = vumi_notify.render(None, fields)
    assert json.loads(body) == {"event": "deploy/success", "host": "web-1", "release": "20261201_000000"}


def test_only_the_events_asked_for_are_sent_and_a_failure_is_logged_not_raised():
    hooks = vumi_settings.notify([{"url": "https://bot:s3cret@chat.example/hook", "events": ["deploy/failure"]},
                                  {"url": "https://ok.example/hook", "events": ["deploy/*"]}])  # fmt: skip
    asked = []

    def query(url, **kwargs):
        asked.append((url, kwargs["opts"]["http_request_timeout"]))
        if "chat" in url:
            raise OSError("connection refused")
        return {"status": 204}

    assert vumi_notify.send(query, hooks, "deploy/success", {}) == {"https://ok.example/hook": 204}
    caplog = Warnings()
    vumi_notify.log.addHandler(caplog)
    try:
        sent = vumi_notify.send(query, hooks, "deploy/failure", {"error": "boom"})
    finally:
        vumi_notify.log.removeHandler(caplog)
    assert sent == {"https://bot:****@chat.example/hook": "OSError: connection refused", "https://ok.example/hook": 204}
    assert "s3cret" not in caplog.text and "connection refused (the deploy goes on)" in caplog.text
    assert asked[0] == ("https://ok.example/hook", 5.0)


def test_vumi_settings_shows_a_webhooks_site_not_its_secret():
    hooks = vumi_settings.notify([{"url": "https://bot:pw@hooks.slack.com/services/T0/B0/XXXX",
                                   "headers": {"X-Token": "abc"}}])  # fmt: skip
    (shown,) = vumi_settings.masked({"repo_url": "https://x.example/r.git", "notify": hooks})["notify"]
    mask = vumi_settings.MASK
    assert shown["url"] == f"https://bot:****@hooks.slack.com/{mask}" and shown["headers"] == {"X-Token": mask}
    assert hooks[0]["url"].endswith("XXXX"), "what is sent is untouched"
