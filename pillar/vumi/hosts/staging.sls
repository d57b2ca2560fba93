# Hosts that serve staging: `state.highstate` (or `state.apply vumi` with no branch) deploys it.
vumi:
  deploy: [staging]
