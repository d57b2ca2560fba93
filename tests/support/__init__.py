"""
What the tests share, one module per concern:

- ``helpers``: what a user looks at (HTTP answers, the tree), Salt's loader, pillar trees;
- ``host``: the guard that fails a test which changes the host outside its temp dirs;
- ``users``: throw-away deploy users and the folders they can reach;
- ``tree``: an environment's history, snapshots of a tree;
- ``net``: free loopback ports;
- ``salt_config``: a masterless minion's config;
- ``supervisor``, ``nginx``, ``postgres``, ``git_http``: the real daemons a test starts;
- ``failures``: environments built fast, ``salt-call`` in a subprocess, an operator's checks
  after an accident (the failure, crash and hostile-input tests);
- ``privileges``: a throw-away deploy user with a deployed environment, and its attacks
  (fixtures, imported by name into the modules that use them);
- ``fleet``: hosts on this one machine for a real salt-master and minions; ``ssh``: a real
  sshd and a salt-ssh controller.
"""
