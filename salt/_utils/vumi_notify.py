"""
Webhooks on deploy start, success and failure, rollbacks and fleet phases (pillar
``notify``), sent with Salt's own HTTP client (``http.query`` on a minion,
``salt.utils.http.query`` from the master's runner). A webhook that fails is logged,
never fails the deploy; a URL's password or token is masked wherever it is shown.
"""

import fnmatch
import json
import logging

import vumi_settings

log = logging.getLogger(__name__)


def matches(hook, event):
    return any(fnmatch.fnmatchcase(event, pattern) for pattern in hook["events"])


def render(body, fields):
    """The request body: ``body`` (a template, or a mapping of templates sent as JSON), or every field as JSON."""
    values = {name: "" if fields.get(name) is None else fields[name] for name in vumi_settings.NOTIFY_FIELDS}
    if body is None:
        return json.dumps({k: v for k, v in fields.items() if v is not None}, default=str), "application/json"
    if isinstance(body, dict):
        return json.dumps({k: v.format_map(values) for k, v in body.items()}), "application/json"
    return body.format_map(values), "text/plain; charset=utf-8"


def send(query, hooks, event, fields):
    """
    POST ``event`` (with ``fields``) to every hook of ``hooks`` that asks for it, each
    bounded by its timeout; ``query(url, **kwargs)`` is Salt's HTTP query. Returns
    {masked url: HTTP status or what went wrong}; nothing is raised.
    """
    fields = dict(fields, event=event)
    sent = {}
    for hook in hooks or []:
        if not matches(hook, event):
            continue
        shown = vumi_settings.mask_credentials(hook["url"])
        data, kind = render(hook["body"], fields)
        timeout = hook["timeout"]
        try:
            res = query(hook["url"], method="POST", data=data, header_dict={"Content-Type": kind, **hook["headers"]},
                        status=True, raise_error=False, decode_body=True,
                        opts={"http_connect_timeout": timeout, "http_request_timeout": timeout})  # fmt: skip
            status = res.get("status") if isinstance(res, dict) else None
            said = status if isinstance(status, int) and 200 <= status < 300 else (res or {}).get("error") or status
        except Exception as exc:  # pylint: disable=broad-except
            said = f"{type(exc).__name__}: {exc}"
        sent[shown] = said
        if not isinstance(said, int):
            log.warning("vumi notify %s: %s: %s (the deploy goes on)", event, shown,
                        vumi_settings.mask_credentials(str(said)))  # fmt: skip
    return sent
