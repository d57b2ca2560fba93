"""
Git: stages ``fetch`` (the cached clone) and ``cut_release`` (a clone sharing its objects); remote revisions.
"""

import contextlib
import datetime
import logging
import os
import re
import shutil
import tempfile

from salt.exceptions import CommandExecutionError

import vumi_commands
import vumi_files
import vumi_naming
import vumi_settings

log = logging.getLogger(__name__)


def run(salt, cmd, what, cwd=None, runas=None, env=None):
    """Run an argument list with Salt's cmd.run_all; raise with its output's tail on failure."""
    cmd, env, runas, clean = vumi_commands.as_user(cmd, runas, dict(env or {}, GIT_TERMINAL_PROMPT="0"))
    res = salt["cmd.run_all"](
        cmd,
        cwd=cwd,
        runas=runas,
        env=env,
        clean_env=clean,
        python_shell=False,
        output_loglevel="quiet",
        ignore_retcode=True,  # a failure raises below; a probe that fails must not fail the job
    )
    if res["retcode"] != 0:
        # what and git's own words may name the repository's URL: never with its password
        raise CommandExecutionError(
            vumi_settings.mask_credentials(f"{what} failed (exit {res['retcode']}): {vumi_files.output_tail(res)}")
        )
    return res["stdout"].strip()


def git(salt, args, what, cwd=None, runas=None):
    return run(salt, ["git", *args], what, cwd=cwd, runas=runas)


def _clone_cache(d):
    cfg, repo = d.cfg, d.paths.repo
    tmp = f"{repo}.clone-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shallow = ["--depth", str(cfg["git_depth"]), "--no-single-branch"] if cfg["git_depth"] else []
    try:
        git(d.salt, ["clone", "--quiet", "--no-checkout", *shallow, "--", cfg["repo_url"], tmp],
            f"git clone {cfg['repo_url']}", runas=d.runas)  # fmt: skip
    except CommandExecutionError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, repo)
    _private_config(d)


def _private_config(d):
    """A repository URL with credentials is written to the cache's .git/config: keep it from other users."""
    if vumi_settings.mask_credentials(d.cfg["repo_url"]) != d.cfg["repo_url"]:
        run(d.salt, ["chmod", "0600", os.path.join(".git", "config")], "chmod .git/config", cwd=d.paths.repo,
            runas=d.runas)  # fmt: skip


#: for the auto-maintenance git runs after a fetch: pack loose objects early (each deploy fetches a
#: few, and a release's clone --shared and checkout slow down with hundreds of them), in the
#: deploy's own time (not detached), and never prune: a release's clone --shared reads the cache's
#: objects, also those of a commit no branch reaches any more (a force push), which rollback needs
GC = ["-c", "gc.auto=256", "-c", "gc.autoDetach=false", "-c", "gc.pruneExpire=never",
      "-c", "gc.reflogExpireUnreachable=never"]  # fmt: skip


def _update_cache(d):
    """Fetch into the cache; return the commit to deploy, its objects checked (None: not there yet)."""
    cfg, repo = d.cfg, d.paths.repo
    git(d.salt, ["remote", "set-url", "origin", cfg["repo_url"]], "git remote set-url", cwd=repo, runas=d.runas)
    _private_config(d)
    shallow = ["--depth", str(cfg["git_depth"])] if cfg["git_depth"] else []
    git(d.salt, [*GC, "fetch", "--quiet", "--prune", "--force", *shallow, "origin",
                 "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
        f"git fetch {cfg['repo_url']}", cwd=repo, runas=d.runas)  # fmt: skip
    # a cache whose objects were damaged (a pack file lost) fetches fine and fails here. Only the
    # commit to deploy is checked, all its trees and blobs: a cost of its size, not of the history
    # (git fsck of the whole cache grew with every deploy)
    wanted = _resolve_pin(d) if d.revision is not None else _ref(d, f"refs/remotes/origin/{cfg['branch']}", peel="")
    if wanted is not None:
        git(d.salt, ["rev-list", "--objects", "--no-walk", "--quiet", wanted], "git rev-list --objects (damaged cache?)",
            cwd=repo, runas=d.runas)  # fmt: skip
    return wanted


def fetch(d):
    cfg, repo = d.cfg, d.paths.repo
    known = None  # the commit, when the cache update already resolved it
    if not os.path.isdir(os.path.join(repo, ".git")):
        _clone_cache(d)
    else:
        try:
            known = _update_cache(d)
        except CommandExecutionError as exc:
            # unusable cache, or the repository is unreachable: a fresh clone tells which
            broken = f"{repo}.broken-{os.getpid()}"
            os.rename(repo, broken)
            try:
                _clone_cache(d)
            except CommandExecutionError:
                os.rename(broken, repo)  # the remote is the problem: keep the cache
                raise exc from None
            log.warning("the cached clone %s was unusable (%s); cloned it again", repo, exc)
            shutil.rmtree(broken, ignore_errors=True)
    if d.revision is not None:
        d.sha = known if known is not None else _resolve_pin(d)
        if d.sha is None and cfg["git_depth"]:
            # a pin older than the shallow history: fetch that commit, else the whole history
            try:
                git(d.salt, ["fetch", "--quiet", "--depth", str(cfg["git_depth"]), "origin", d.revision],
                    "git fetch", cwd=repo, runas=d.runas)  # fmt: skip
            except CommandExecutionError:
                git(d.salt, ["fetch", "--quiet", "--unshallow", "origin"], "git fetch --unshallow", cwd=repo,
                    runas=d.runas)  # fmt: skip
            d.sha = _resolve_pin(d)
        if d.sha is None:
            raise CommandExecutionError(
                f"revision {d.revision!r} is not in {vumi_settings.mask_credentials(cfg['repo_url'])}"
            )
        git(d.salt, ["checkout", "--quiet", "--force", "--detach", d.sha], "git checkout", cwd=repo, runas=d.runas)
    else:
        d.sha = known if known is not None else _ref(d, f"refs/remotes/origin/{cfg['branch']}")
        if d.sha is None:
            raise CommandExecutionError(
                f"branch {cfg['branch']!r} not found in {vumi_settings.mask_credentials(cfg['repo_url'])}"
            )
        git(
            d.salt,
            ["checkout", "--quiet", "--force", "-B", cfg["branch"], d.sha],
            "git checkout",
            cwd=repo,
            runas=d.runas,
        )


def _ref(d, ref, peel="^{commit}"):
    """The commit ``ref`` names in the cache; None if it names none (``peel=""``: the ref alone,
    without reading the object it names)."""
    try:
        # as the clone's owner: git refuses to read a repository another user owns
        return git(d.salt, ["rev-parse", "--verify", "--quiet", f"{ref}{peel}"], "", cwd=d.paths.repo,
                   runas=d.runas)  # fmt: skip
    except CommandExecutionError:
        return None


def _resolve_pin(d):
    """The commit of ``d.revision`` in the cache: the upstream branch of that name first (the
    cache's local branch may be stale), then a tag, then a commit; None if it has none."""
    for ref in (f"refs/remotes/origin/{d.revision}", f"refs/tags/{d.revision}", d.revision):
        sha = _ref(d, ref)
        if sha is not None:
            return sha
    return None


def cut_release(d):
    """The release's code: a clone sharing the cache's objects (small .git), at the commit."""
    if d.release is None:
        d.release = vumi_naming.new_release_name(d.paths)
    else:
        vumi_naming.check_sorts_last(d.paths, d.release)
    rel = d.paths.release(d.release)
    if os.path.lexists(rel):
        raise CommandExecutionError(f"release {d.release} already exists in {d.paths.releases}")
    vumi_files.makedirs(rel, d.runas)
    d.cut = True  # this deploy made the folder: a failure from here on moves it to failed/
    code = d.paths.checkout(d.release)
    # no hook samples, no reflogs: the release's .git is a few small files
    git(d.salt, ["clone", "--quiet", "--shared", "--no-checkout", "--template=", "--config=core.logAllRefUpdates=false",
          "--", d.paths.repo, code], "git clone --shared", runas=d.runas)  # fmt: skip
    git(d.salt, ["checkout", "--quiet", "--detach", d.sha], "git checkout", cwd=code, runas=d.runas)
    if os.path.isfile(os.path.join(code, ".gitmodules")) and not os.path.islink(os.path.join(code, ".gitmodules")):
        # local submodule URLs (file protocol) are what git blocks by default since 2.38
        git(d.salt, ["-c", "protocol.file.allow=always", "submodule", "--quiet", "update", "--init", "--recursive"],
            "git submodule update", cwd=code, runas=d.runas)  # fmt: skip
    if d.cfg["repo_tree"]:
        # the app is a subfolder: a real one of this commit, not a link the repository planted
        path = code
        for part in d.cfg["repo_tree"].split("/"):
            path = os.path.join(path, part)
            if os.path.islink(path) or not os.path.isdir(path):
                raise CommandExecutionError(f"repo_tree {d.cfg['repo_tree']!r} is not a folder of {d.sha[:12]}")


def commit_info(salt, code, sha, runas):
    """The commit's time (UTC, ISO 8601) and subject, for the manifest (Capistrano's REVISION_TIME)."""
    out = git(salt, ["log", "-1", "--format=%ct%n%s", sha], "git log", cwd=code, runas=runas)
    stamp, _, subject = out.partition("\n")
    when = datetime.datetime.fromtimestamp(int(stamp), datetime.timezone.utc).isoformat(timespec="seconds")
    return {"commit_time": when, "commit_subject": subject}


#: what may be a commit id too short for the remote to list (``git ls-remote`` names refs only)
SHORT_SHA_RE = re.compile(r"^[0-9a-f]{4,39}$")


def remote_revision(salt, cfg, paths, pin):
    """
    The commit to be at, changing nothing: a full commit id pin as it is, else
    ``git ls-remote`` of the branch (or the pinned tag), else the pin resolved
    in the cached clone; None for a short commit id not known here yet. A branch,
    or a pin that is no commit id, that the remote does not have is an error.
    """
    pin = vumi_settings.revision(pin)
    runas = vumi_files.runas_user(cfg)  # the user's credentials reach the remote, as the deploy's fetch does
    if pin is not None:
        if vumi_settings.SHA_RE.match(pin):
            return pin
        refs = [f"refs/tags/{pin}^{{}}", f"refs/tags/{pin}", f"refs/heads/{pin}"]
    else:
        refs = [f"refs/heads/{cfg['branch']}"]
    out = git(salt, ["ls-remote", "--", cfg["repo_url"], *refs], f"git ls-remote {cfg['repo_url']}", runas=runas)
    found = dict(reversed(line.split("\t", 1)) for line in out.splitlines() if "\t" in line)
    for ref in refs:
        if ref in found:
            return found[ref]
    if pin is not None and os.path.isdir(paths.repo):
        with contextlib.suppress(CommandExecutionError):
            return git(salt, ["rev-parse", "--verify", "--quiet", f"{pin}^{{commit}}"], "rev-parse", cwd=paths.repo,
                       runas=runas)  # fmt: skip
    if pin is not None and SHORT_SHA_RE.match(pin):
        return None  # a short commit id: the remote lists none; a deploy fetches and then decides
    if pin is not None:
        raise CommandExecutionError(
            f"revision {pin!r} not found in {vumi_settings.mask_credentials(cfg['repo_url'])}: no such tag or branch"
        )
    raise CommandExecutionError(
        f"branch {cfg['branch']!r} not found in {vumi_settings.mask_credentials(cfg['repo_url'])}"
    )


def files_upstream(salt, cfg, ref, names):
    """
    Which of ``names`` (paths) are in the commit ``ref`` (a branch or tag name) has upstream,
    asked without the cached clone: one commit's trees fetched into a throw-away
    repository (``--depth 1``, and no file contents where the remote can filter
    them). What ``vumi.check`` asks before a first deploy, which has no cache yet.
    """
    runas = vumi_files.runas_user(cfg)
    tmp = tempfile.mkdtemp(prefix="vumi-probe-")
    try:
        git(salt, ["init", "--quiet", "--bare", tmp], "git init", runas=runas)
        git(salt, ["fetch", "--quiet", "--depth", "1", "--filter=blob:none", "--", cfg["repo_url"], ref],
            f"git fetch {vumi_settings.mask_credentials(cfg['repo_url'])} {ref}", cwd=tmp, runas=runas)  # fmt: skip
        return files_in(salt, tmp, "FETCH_HEAD", names, runas)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def files_in(salt, repo, commit, names, runas=None):
    """Which of ``names`` (paths) commit ``commit`` of ``repo`` holds."""
    out = git(salt, ["ls-tree", "--name-only", "-z", commit, "--", *names], "git ls-tree", cwd=repo, runas=runas)
    return {n for n in out.split("\0") if n}


def has_file_upstream(salt, cfg, ref, path):
    """Whether ``path`` is in the commit ``ref`` has upstream (see ``files_upstream``)."""
    return path in files_upstream(salt, cfg, ref, [path])
