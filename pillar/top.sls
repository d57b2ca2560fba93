# An example top: every host gets the settings of both environments; which ones a host
# converges on `state.highstate` (or `state.apply vumi` with no pillar branch) is its
# vumi:deploy list. Copy it next to your own pillar and target your own hosts.
base:
  '*':
    - vumi.defaults
    - vumi.staging
    - vumi.production
  'web-staging*':
    - vumi.hosts.staging
  'web-prod*':
    - vumi.hosts.production
