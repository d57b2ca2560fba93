"""
How Salt finds this bundle when it is installed with ``pip install vumi-salt`` (or
``salt-pip install`` on a onedir minion): the ``salt.loader`` entry point in
``setup.cfg`` names :py:func:`loader_dirs`, and Salt's loader asks it for the
folders of each kind of module. The helpers (``salt/_utils``) are installed as
plain modules beside Salt, so no ``module_dirs`` and no ``saltutil.sync_all`` is
needed. In a checkout this file is not used: a master serves ``salt/`` from
``file_roots`` and ``saltutil.sync_all`` copies the same folders to minions.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))

#: Salt's name for a kind of module, and the folder of this bundle that holds them
KINDS = {"modules": "_modules", "states": "_states", "runners": "_runners", "grains": "_grains", "wrapper": "_wrapper"}


def loader_dirs():
    """{kind: [folder]}: where Salt's loader finds this bundle's modules."""
    return {kind: [os.path.join(HERE, folder)] for kind, folder in KINDS.items()}


def formula_root():
    """The folder to add to ``file_roots`` for the formula (``vumi/init.sls``, ``vumi/orch/deploy.sls``)."""
    return HERE
