"""
What the integration tests share besides fixtures: deploy targets ("hosts") on this
one machine, each with its own base_dir, sample repository and loopback ports, and
the pillar tree that gives each of them its own settings.
"""

import contextlib
import dataclasses
import getpass
import json
import pathlib

from saltfactories.utils import random_string

import make_repo as sample  # on sys.path thanks to tests/conftest.py
from support.net import free_ports  # noqa: F401  (for the test modules)
from support.supervisor import Supervisord

REPO = pathlib.Path(__file__).resolve().parents[2]
SALT_CALL = REPO / ".venv" / "bin" / "salt-call"
ENVS = ("staging", "production")


@dataclasses.dataclass
class Host:
    """One deploy target: what its pillar override says."""

    id: str
    base_dir: pathlib.Path
    repo: pathlib.Path
    ports: dict  # environment -> [ports]
    supervisord: Supervisord = None  # the host's own, as its init system would run it

    def pillar(self):
        return {
            "vumi": {
                "base_dir": str(self.base_dir),
                "repo_url": str(self.repo),
                "user": getpass.getuser(),
                "start_timeout": 20,
                "stop_timeout": 5,
                "supervisor": self.supervisord.settings(),
                "environments": {env: {"ports": ports} for env, ports in self.ports.items()},
            }
        }

    def revision(self, env):
        return sample.git(self.repo, "rev-parse", f"refs/heads/{env}")

    def env_root(self, env):
        return self.base_dir / "vumi" / env

    def releases(self, env):
        folder = self.env_root(env) / "releases"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def make_host(root, host_id, ports, repo=None):
    """A host with its own base_dir and supervisord; its own sample repository unless ``repo`` (one upstream)."""
    root = pathlib.Path(root)
    base_dir = root / "srv"
    base_dir.mkdir(parents=True)
    repo = repo or sample.make_repo(root / "upstream" / "sampleapp")
    return Host(id=host_id, base_dir=base_dir, repo=repo, ports=ports, supervisord=Supervisord().start())


def write_pillar(pillar_dir, hosts):
    """
    ``top.sls`` giving every minion the bundle's pillar, then each host its own
    override file (matched by minion id, so it is merged last and wins).
    """
    pillar_dir = pathlib.Path(pillar_dir)
    pillar_dir.mkdir(parents=True, exist_ok=True)
    (pillar_dir / "vumi").symlink_to(REPO / "pillar" / "vumi", target_is_directory=True)
    top = ["base:", "  '*':", "    - vumi.defaults", "    - vumi.staging", "    - vumi.production"]
    for index, host in enumerate(hosts):
        name = f"host{index}"
        # JSON is YAML: no quoting surprises with paths
        (pillar_dir / f"{name}.sls").write_text(json.dumps(host.pillar(), indent=2) + "\n")
        top += [f"  {json.dumps(host.id)}:", f"    - {name}"]
    (pillar_dir / "top.sls").write_text("\n".join(top) + "\n")
    return pillar_dir


@contextlib.contextmanager
def started_master(salt_factories, pillar_dir, id_prefix):
    """
    A real salt-master serving this repo's ``salt/`` (with its state top, ``salt/top.sls``:
    highstate deploys what a host's ``vumi:deploy`` lists) and the pillar tree ``pillar_dir``
    (its ``.pillar_dir``).
    """
    factory = salt_factories.salt_master_daemon(
        random_string(id_prefix),
        overrides={
            "file_roots": {"base": [str(REPO / "salt")]},
            "pillar_roots": {"base": [str(pillar_dir)]},
        },
    )
    factory.pillar_dir = pillar_dir
    with factory.started():
        yield factory


def make_hosts(master, tmp_path_factory, layouts, repo=None):
    """
    One host per ``(id prefix, {env: how many ports})`` of ``layouts``, each with its
    own base_dir, repository (or all the one ``repo``, as a fleet has) and loopback
    ports (none of the master's), and their pillar written into the master's pillar tree.
    """
    taken = {
        v for k, v in master.config.items()
        if ("port" in k or k.startswith("tcp_")) and isinstance(v, int)
    }  # fmt: skip
    hosts = []
    for prefix, counts in layouts:
        host_id = random_string(prefix, uppercase=False)
        ports = free_ports(sum(counts.values()), taken)
        taken.update(ports)
        by_env, start = {}, 0
        for env, count in counts.items():
            by_env[env], start = ports[start : start + count], start + count
        hosts.append(make_host(tmp_path_factory.mktemp(host_id), host_id, by_env, repo))
    write_pillar(master.pillar_dir, hosts)
    return hosts


def kill_leftover_webapps(hosts):
    """
    After the tests' own ``vumi.stop_webapp_cluster``: each host's supervisord (which the
    test started) is stopped, and with it whatever it still ran. Returns the programs
    that were still running.
    """
    leftovers = []
    for host in hosts:
        with contextlib.suppress(OSError, ConnectionError):
            leftovers += [
                n for n, p in host.supervisord.processes().items() if p["statename"] in ("RUNNING", "STARTING")
            ]
        host.supervisord.remove()
    return leftovers


@contextlib.contextmanager
def pillar_override(master, salt_cli, hosts, host, **settings):
    """``host``'s own pillar file (as ``write_pillar`` names it) with ``settings`` added; then restored."""
    pillar_file = master.pillar_dir / f"host{hosts.index(host)}.sls"
    good = pillar_file.read_text()
    pillar = host.pillar()
    pillar["vumi"].update(settings)
    pillar_file.write_text(json.dumps(pillar, indent=2) + "\n")
    try:
        ret = salt_cli.run("saltutil.refresh_pillar", wait=True, minion_tgt=host.id)
        assert ret.returncode == 0, ret
        yield
    finally:
        pillar_file.write_text(good)
        salt_cli.run("saltutil.refresh_pillar", wait=True, minion_tgt=host.id)
