"""
Stage ``link_shared``: the shared folders linked into a release.

Each name of ``shared_dirs`` (nested ones too: ``public/system``) is a folder of
``shared/`` linked into the release's code folder, replacing what the repository
has there (the shared folder wins, as in Capistrano). A shared folder that does
not exist yet is made; on that first deploy, what the repository tracks in it
seeds it (as Deployer does) instead of being thrown away. No step goes through a
symlink: the repository or the deploy user could have planted one.
"""

import logging
import os
import shutil

from salt.exceptions import CommandExecutionError

import vumi_files

log = logging.getLogger(__name__)


def real_folder(base, parts, runas):
    """``base/parts...`` as real folders, made (as ``runas``) where missing; a symlink on the way is refused."""
    path = base
    for part in parts:
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise CommandExecutionError(f"{path} is a symlink; refusing to follow it for a shared folder")
        if os.path.lexists(path) and not os.path.isdir(path):
            raise CommandExecutionError(f"{path} is not a folder; a shared folder cannot go there")
        vumi_files.makedirs(path, runas)
    return path


def link_shared(d):
    code = d.paths.code(d.release)
    exclude = []
    for name in d.cfg["shared_dirs"]:
        parts = name.split("/")
        real_folder(code, parts[:-1], d.runas)  # code/public of public/system
        real_folder(d.paths.shared, parts[:-1], d.runas)
        target = os.path.join(d.paths.shared, name)
        link = os.path.join(code, name)
        if os.path.isdir(link) and not os.path.islink(link):
            if not os.path.lexists(target) and os.listdir(link):
                os.rename(link, target)  # the first deploy: the repository's content seeds the shared folder
            else:
                shutil.rmtree(link)
        elif os.path.lexists(link):
            os.remove(link)
        real_folder(d.paths.shared, parts, d.runas)  # a configured folder is never linked dangling
        os.symlink(target, link)
        vumi_files.chown(link, d.runas)
        exclude.append(f"/{name}\n")
    for name in d.cfg["shared_files"]:
        parts = name.split("/")
        target = os.path.join(d.paths.shared, name)
        real_folder(d.paths.shared, parts[:-1], d.runas)
        if os.path.islink(target) or not os.path.isfile(target):
            # Capistrano's deploy:check:linked_files: the deploy stops before the switch
            raise CommandExecutionError(f"shared file {target} is missing (or not a regular file): create it first")
        real_folder(code, parts[:-1], d.runas)
        link = os.path.join(code, name)
        if os.path.isdir(link) and not os.path.islink(link):
            raise CommandExecutionError(
                f"{link} is a folder in the repository; the shared file {name} cannot replace it"
            )
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
        vumi_files.chown(link, d.runas)
        exclude.append(f"/{name}\n")
    checkout = d.paths.checkout(d.release)
    if d.cfg["repo_tree"]:  # git's exclude patterns are relative to the checkout
        exclude = [f"/{d.cfg['repo_tree']}{line}" for line in exclude]
    vumi_files.makedirs(os.path.join(checkout, ".git", "info"), d.runas)
    with open(os.path.join(checkout, ".git", "info", "exclude"), "a", encoding="utf-8") as fh:
        fh.writelines(exclude)
    vumi_files.chown(os.path.join(checkout, ".git", "info", "exclude"), d.runas)
