"""
Release names: a UTC timestamp later than every name the environment has used (its
history, ``releases/``, ``failed/``), so names sort in deploy order.
"""

import datetime
import os

from salt.exceptions import CommandExecutionError

import vumi_files
import vumi_history
import vumi_settings


def used_release_names(paths):
    """Every release name this environment has used: history, releases/, failed/."""
    used = [e.get("release") for e in vumi_history.read_history(paths)]
    for folder in (paths.releases, paths.failed):
        used += os.listdir(folder) if os.path.isdir(folder) else []
    return [n for n in used if isinstance(n, str) and vumi_settings.RELEASE_RE.match(n)]


def check_sorts_last(paths, name):
    """
    A name given by the caller (one for a whole fleet) must sort after every name
    used here: pruning keeps the newest by name, and an older-sorting release
    would make it drop the wrong ones.
    """
    last = max(used_release_names(paths), default=None)
    if last is not None and name <= last:
        raise CommandExecutionError(
            f"release name {name} does not sort after {last}, already used in {paths.root} "
            "(a clock ahead of this one?); give a later release name"
        )


def new_release_name(paths):
    """
    A UTC timestamp, later than any release name used before: names sort in
    deploy order even when pruning frees a name or the clock steps back.
    """
    when = vumi_files.now().replace(microsecond=0)
    used = used_release_names(paths)
    try:
        if used:
            last = datetime.datetime.strptime(max(used), vumi_settings.RELEASE_FORMAT)
            when = max(when, last.replace(tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=1))
        while True:
            name = when.strftime(vumi_settings.RELEASE_FORMAT)
            if not any(os.path.lexists(os.path.join(p, name)) for p in (paths.releases, paths.failed)):
                return name
            when += datetime.timedelta(seconds=1)
    except (OverflowError, ValueError):
        raise CommandExecutionError(
            f"release name {max(used)} (in {paths.releases}, {paths.failed} or the history) is later than any "
            "time a new release can be named after; remove it, or give release= a later name"
        ) from None
