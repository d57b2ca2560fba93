"""
salt-ssh wrapper of the ``vumi`` execution module: the same functions, with pillar.

Under salt-ssh a module called on its own (``salt-ssh 'web*' vumi.restart_webapp
staging 8001``) runs on the host through ``salt-call --local`` and sees no pillar
(a long-standing salt-ssh limitation: pillar is compiled on the controlling host
and only ``state.*`` ships it). This wrapper runs on the controlling host, where
salt-ssh compiled the host's pillar, and calls the host's ``vumi.<function>``
with that ``vumi`` pillar as the ``vumi_pillar`` argument, so every function
reads the same settings as under a master or masterless.

The pillar's ``settings`` mappings (which may hold secrets) travel only to the
functions that use them (``deploy``, ``prepare``, ``current``, ``settings``): an
argument of a salt-ssh call is part of the remote command line. ``state.apply``
ships pillar as a file and is the way to deploy settings that hold secrets.

Install on the controlling host (``salt/_wrapper`` is synced like ``_modules``)::

    salt-run saltutil.sync_all        # or saltutil.sync_wrapper
"""

import salt.client.ssh.wrapper

__virtualname__ = "vumi"

#: The module functions that read settings (all take ``**kwargs``), and those of
#: them that need the ``settings`` mappings. tests/unit checks the first list
#: against salt/_modules/vumi.py.
FUNCTIONS = (
    "settings", "settings_problem", "paths", "releases", "current", "remote_revision", "prepare", "publish",
    "deploy", "layout", "update", "create_virtualenv", "execute", "managepy", "rollback",
    "cleanup", "discard", "remove", "start_webapp", "stop_webapp", "restart_webapp",
    "start_webapp_cluster", "stop_webapp_cluster", "restart_webapp_cluster", "webapp_status", "webapp_programs",
    "process_status", "restart_processes", "cron_jobs",
    "lock", "unlock", "locked", "check", "environments", "summary", "revert", "held", "unhold", "fleet_step",
    "renew", "serving", "settle", "history", "maintenance",
)  # fmt: skip
WITH_SETTINGS = ("deploy", "prepare", "current", "settings")


def __virtual__():
    return __virtualname__


def _on_host():
    """The host's own functions: a FunctionWrapper without wrappers (``__salt__`` has this one)."""
    target = dict(__salt__.kwargs)
    return salt.client.ssh.wrapper.FunctionWrapper(
        __salt__.opts,
        target.pop("id_"),
        target.pop("host"),
        mods=__salt__.mods,
        fsclient=__salt__.fsclient,
        minion_opts=__salt__.minion_opts,
        **target,
    )


def _vumi_pillar(fun):
    """This host's ``vumi`` pillar as salt-ssh compiled it here, without what ``fun`` does not need."""
    pillar = dict(__pillar__.get("vumi") or {})
    if fun not in WITH_SETTINGS:
        pillar.pop("settings", None)
        pillar["environments"] = {
            env: {k: v for k, v in (own or {}).items() if k != "settings"}
            for env, own in (pillar.get("environments") or {}).items()
        }
    return pillar


def _call(fun, args, kwargs):
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    kwargs.setdefault("vumi_pillar", _vumi_pillar(fun))
    return _on_host()[f"vumi.{fun}"](*args, **kwargs)


def _make(fun):
    def call(*args, **kwargs):
        return _call(fun, args, kwargs)

    call.__name__ = fun
    call.__doc__ = f"``vumi.{fun}`` on the host, with the host's pillar (see the execution module)."
    return call


for _fun in FUNCTIONS:
    globals()[_fun] = _make(_fun)
del _fun
