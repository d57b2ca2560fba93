"""
What ``pip install vumi-salt`` installs (setup.cfg), against the checkout: every
helper, every folder of modules the entry point names, every file of the formula.
A helper added to ``salt/_utils`` but not to ``py_modules`` would install a bundle
whose execution module cannot load.
"""

import configparser
import pathlib

from saltext.vumi import extension

REPO = pathlib.Path(__file__).resolve().parents[2]


def _options():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _listed(text):
    return {line.strip() for line in text.splitlines() if line.strip()}


def test_every_helper_is_installed():
    helpers = {path.stem for path in (REPO / "salt" / "_utils").glob("vumi_*.py")}
    assert _listed(_options()["options"]["py_modules"]) == helpers


def test_every_folder_of_modules_and_of_the_formula_is_installed():
    packages = _listed(_options()["options"]["packages"])
    folders = {
        p
        for p in (REPO / "salt").rglob("*")
        if p.is_dir() and p.name not in ("__pycache__", "_utils") and not p.name.endswith(".egg-info")
    }
    assert {"saltext.vumi." + ".".join(p.relative_to(REPO / "salt").parts) for p in folders} | {
        "saltext.vumi"
    } == packages


def test_the_entry_point_names_the_folders_salt_loads():
    entry = _listed(_options()["options.entry_points"]["salt.loader"])
    assert entry == {"vumi = saltext.vumi.extension:loader_dirs"}
    dirs = extension.loader_dirs()
    assert set(dirs) == {"modules", "states", "runners", "grains", "wrapper"}
    for kind, (folder,) in dirs.items():
        assert pathlib.Path(folder).is_dir() and any(pathlib.Path(folder).glob("vumi*.py")), kind
    assert (pathlib.Path(extension.formula_root()) / "vumi" / "init.sls").is_file()
