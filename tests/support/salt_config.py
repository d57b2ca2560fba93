"""The config of a ``salt-call --local`` minion of the bundle, as scripts/demo writes one."""

import getpass
import pathlib

from saltfactories.utils import random_string

REPO = pathlib.Path(__file__).resolve().parents[2]


def masterless_minion(state, pillar, id_prefix="vumi-", minion_id=None, **more):
    """
    Options of a masterless minion: this checkout's states and modules, pillar from
    ``pillar``, everything it keeps under ``state``; ``more`` added (``vumi`` settings...).
    """
    state = pathlib.Path(state)
    return {
        "id": minion_id or random_string(id_prefix),
        "user": getpass.getuser(),
        "file_client": "local",
        "file_roots": {"base": [str(REPO / "salt")]},
        "pillar_roots": {"base": [str(pillar)]},
        "root_dir": str(state),
        "cachedir": str(state / "cache"),
        "pki_dir": str(state / "pki"),
        "sock_dir": str(state / "sock"),
        "log_file": str(state / "minion.log"),
        "log_level_logfile": "info",
        **more,
    }
