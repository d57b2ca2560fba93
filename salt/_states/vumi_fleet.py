"""
The fleet deploy as one orchestration state (on the master): ``vumi.orch.deploy``.

.. code-block:: yaml

    staging:
      vumi_fleet.deployed:
        - tgt: 'web*'
        - batch: 1

Thin over the ``vumi.deploy`` runner (``salt-run saltutil.sync_all`` puts both on
the master): its comment leads with the host that failed, the phase and the
error, then what was undone; ``test=True`` names the hosts, revision and release.
"""

__virtualname__ = "vumi_fleet"


def __virtual__():
    if __opts__.get("__role") != "master":
        return (False, "vumi_fleet runs in an orchestration on the master (salt-run state.orchestrate)")
    return __virtualname__


def deployed(name, tgt, tgt_type="glob", revision=None, release=None, batch=None, hold=90, timeout=120,
             canary=None, canary_wait=30, force=False):  # fmt: skip
    """
    Environment ``name`` deployed to every host ``tgt`` matches, all or none (see
    the ``vumi.deploy`` runner).

    name
        The environment.
    tgt, tgt_type
        The hosts, as ``salt`` targets them.
    revision
        A commit or tag (default: the branch tip, resolved once for every host).
    release
        The release name for every host (default: the time now, in UTC).
    batch
        The restart phase's hosts at a time (``2``, ``25%``; default all).
    timeout
        Seconds each phase waits for every host (default 120); a host silent
        that long fails the run, named.
    hold
        Seconds a host stays held after the run's last heartbeat (default 90).
    canary, canary_wait
        Hosts (``1``, ``10%``) published, restarted and watched for
        ``canary_wait`` seconds before the others (see ``vumi.deploy``).
    force
        First bring back onto one release a fleet that a dead run left split
        or held (``vumi.recover``).

    With ``test=True`` every host runs ``vumi.check``: the state predicts a
    failure, naming the host and why, or what would be deployed where.
    """
    res = __salt__["saltutil.runner"](
        "vumi.deploy",
        kwarg={
            "branch": name,
            "tgt": tgt,
            "tgt_type": tgt_type,
            "revision": revision,
            "release": release,
            "batch": batch,
            "hold": hold,
            "timeout": timeout,
            "canary": canary,
            "canary_wait": canary_wait,
            "force": force,
            "test": bool(__opts__["test"]),
        },  # fmt: skip
    )
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    if not isinstance(res, dict) or "result" not in res:
        if "is not available" in str(res):  # the runner is not on the master
            ret["comment"] = f"the vumi.deploy runner is not on this master (salt-run saltutil.sync_all): {res}"
        else:  # it ended without a report: interrupted, or it broke
            ret["comment"] = (
                f"the vumi.deploy runner ended without its report (salt-run vumi.status tells where the fleet is): {res}"
            )
        return ret
    ret["result"] = res["result"]
    ret["comment"] = res["comment"]
    if res["result"] is None:  # a dry run: what would change, host by host
        ret["changes"] = {
            host: {"old": old, "new": res["release"], "revision": res["revision"]}
            for host, old in res.get("current", {}).items()
        }
    elif res["result"]:
        ret["changes"] = {
            host: {"old": old, "new": res["release"], "revision": res["revision"]}
            for host, old in res.get("previous", {}).items()
        }
    return ret
