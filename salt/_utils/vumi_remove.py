"""
``vumi.remove``: an environment retired from a host. What goes, in this order: its
webapps and processes (stopped, their supervisor programs dropped), its crontab entries,
its nginx site, its tree
(``<base_dir>/<app>/<env>``: releases, shared files, virtualenvs, the cached clone, the
history) and its webapps' logs; its PostgreSQL database and role only when asked.
The tree is the deploy user's: emptied as that user (``empty``, run through
``vumi_privileges``), then root removes the empty folder from its own parent.
"""

import os
import shutil

from salt.exceptions import CommandExecutionError

import vumi_settings
import vumi_supervisor


def empty(root):
    """
    Everything inside ``root`` removed (run as the tree's owner): nothing followed out of
    it, since ``shutil.rmtree`` opens each folder without following links.
    """
    if os.path.islink(root) or not os.path.isdir(root):
        raise CommandExecutionError(f"{root} is not a folder; refusing to remove it")
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def tree(paths, test=False):
    """The environment's folder and its webapps' logs (root's), as (kind, path) pairs found."""
    found = [("tree", paths.root)] if os.path.lexists(paths.root) else []
    if os.path.lexists(paths.webapp_logs):
        found.append(("logs", paths.webapp_logs))
    for path in (paths.root, paths.webapp_logs):
        if os.path.islink(path):
            raise CommandExecutionError(f"{path} is a symlink; refusing to follow it")
    if test:
        return found
    if os.path.lexists(paths.root):
        os.rmdir(paths.root)  # emptied as its owner first; its parent is root's
    if os.path.lexists(paths.webapp_logs):
        shutil.rmtree(paths.webapp_logs)
    for parent in (os.path.dirname(paths.webapp_logs), paths.app_dir):  # the app's folders, when it was the last
        try:
            os.rmdir(parent)
        except OSError:
            pass
    return found


def site(path, test=False):
    """The nginx site file, as (kind, path) pairs found."""
    if not os.path.lexists(path):
        return []
    if not test:
        os.unlink(path)
    return [("nginx", path)]


def databases(salt, db, test=False):
    """The environment's database and role (Salt's postgres module), as (kind, name) pairs found; dropped unless test."""
    if not db:
        return []
    conn = vumi_settings.admin_connection(db)
    found = []
    if salt["postgres.db_exists"](db["name"], **conn):
        found.append(("database", db["name"]))
    if salt["postgres.user_exists"](db["user"], **conn):
        found.append(("role", db["user"]))
    if not test:
        for kind, name in found:
            drop = salt["postgres.db_remove" if kind == "database" else "postgres.user_remove"]
            if not drop(name, **conn):
                raise CommandExecutionError(f"PostgreSQL did not drop the {kind} {name}")
    return found


def retire(salt, cfg, paths, nginx, database, test, as_owner, unschedule=lambda test: []):
    """
    What of the environment is on this host, in the order it goes (supervisor: webapps and
    processes, cron entries, nginx, tree, logs, database, role), removed unless ``test``:
    ``as_owner(root)`` empties the tree as its owner (``empty`` run as the deploy user);
    ``unschedule(test)`` lists (and removes) its crontab entries, as that user.
    ``removed`` (or ``would_remove``) lists ``<kind>: <what>``.
    """
    site_file = os.path.join(nginx["conf_dir"], f"{vumi_settings.env_name(cfg)}.conf")
    db = cfg["database"] if database else None
    plan = vumi_supervisor.drop_group(cfg, test=True) + unschedule(True) + site(site_file, test=True)
    plan += tree(paths, test=True) + databases(salt, db, test=True)
    kept = []
    if cfg["database"] and not database:
        kept.append(f"database {cfg['database']['name']} and role {cfg['database']['user']} (database=True drops them)")
    if not test and plan:
        vumi_supervisor.drop_group(cfg)
        unschedule(False)
        if site(site_file) and nginx["manage_service"]:
            salt["service.reload"](nginx["service"])
        elif any(kind == "nginx" for kind, _ in plan):
            kept.append("nginx still serves the site until reloaded (vumi:nginx:manage_service is false)")
        if os.path.isdir(paths.root) and not os.path.islink(paths.root):
            as_owner(paths.root)
        tree(paths)
        databases(salt, db)
    lines = [f"{kind}: {what}" for kind, what in plan]
    return {"environment": cfg["environment"], "removed": [] if test else lines,
            "would_remove": lines if test else [], "kept": kept}  # fmt: skip
