"""
Grain ``vumi``: per environment deployed on this minion, its current release and
revision, as the last deploy, publish, rollback or update here recorded them, so
hosts can be targeted by what they run::

    salt -G 'vumi:staging:revision:3f2a1c9*' test.ping
"""

import json
import os
import re
import stat

_RELEASE = re.compile(r"^\d{8}_\d{6}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_ENV = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,200}$")


def vumi():
    path = os.path.join(__opts__.get("cachedir") or "", "vumi", "deployed.json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        data = fh.read(1 << 20)
    try:
        found = json.loads(data.decode("utf-8"))
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    # only what a deploy records: an environment's release name and commit id
    clean = {
        env: {
            "release": entry["release"],
            "revision": entry.get("revision") if _SHA.match(str(entry.get("revision"))) else None,
            **({"maintenance": True} if entry.get("maintenance") is True else {}),  # vumi.maintenance: 503s
        }
        for env, entry in found.items()
        if isinstance(env, str)
        and _ENV.match(env)
        and isinstance(entry, dict)
        and _RELEASE.match(str(entry.get("release")))
    }
    return {"vumi": clean} if clean else {}
