"""
Stage ``link_shared``: the shared folders linked into a release.
"""

import logging
import os
import shutil

import vumi_files

log = logging.getLogger(__name__)


def link_shared(d):
    code = d.paths.code(d.release)
    exclude = []
    for name in d.cfg["shared_dirs"]:
        link = os.path.join(code, name)
        if os.path.isdir(link) and not os.path.islink(link):
            shutil.rmtree(link)  # the shared folder wins, as in Capistrano
        elif os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join(d.paths.shared, name), link)
        vumi_files.chown(link, d.runas)
        exclude.append(f"/{name}\n")
    vumi_files.makedirs(os.path.join(code, ".git", "info"), d.runas)
    with open(os.path.join(code, ".git", "info", "exclude"), "a", encoding="utf-8") as fh:
        fh.writelines(exclude)
    vumi_files.chown(os.path.join(code, ".git", "info", "exclude"), d.runas)
