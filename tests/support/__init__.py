"""
What the tests share, one module per concern:

- ``helpers``: what a user looks at (HTTP answers, the tree), Salt's loader, pillar trees;
- ``host``: the guard that fails a test which changes the host outside its temp dirs;
- ``users``: throw-away deploy users and the folders they can reach;
- ``tree``: an environment's history, snapshots of a tree;
- ``net``: free loopback ports;
- ``salt_config``: a masterless minion's config;
- ``supervisor``, ``nginx``, ``postgres``, ``git_http``: the real daemons a test starts.

Fixtures of one level live beside its tests (``functional/failure_support.py``,
``functional/privileges_support.py``, ``integration/fleet_support.py``, ``ssh_support.py``).
"""
