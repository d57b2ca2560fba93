"""
The fleet, seen from the master: one row per host and environment.

.. code-block:: bash

    salt-run saltutil.sync_runners            # once, and after each upgrade of the bundle
    salt-run vumi.status 'web*'
    salt-run vumi.status 'G@role:web' tgt_type=compound --out=json
"""

import salt.client

__virtualname__ = "vumi"


def __virtual__():
    return __virtualname__


def status(tgt="*", tgt_type="glob", timeout=30):
    """
    Per host and environment (``vumi.summary`` on each targeted minion): the
    current release and revision, whether the branch tip upstream is ahead
    (``behind``), and the webapp ports configured, running and answering HTTP.
    A host that does not answer, or fails, is a row with its ``error``.

    CLI Example:

    .. code-block:: bash

        salt-run vumi.status 'web*'
    """
    client = salt.client.get_local_client(__opts__["conf_file"])
    returns = client.cmd(tgt, "vumi.summary", tgt_type=tgt_type, timeout=timeout, full_return=True)
    rows = []
    for host in sorted(returns):
        ret = returns[host]
        envs = ret.get("ret") if isinstance(ret, dict) else ret
        if not isinstance(envs, list) or (isinstance(ret, dict) and ret.get("retcode")):
            rows.append({"host": host, "error": str(envs)[:500]})
            continue
        rows.extend(dict(host=host, **env) for env in envs)
    return rows
