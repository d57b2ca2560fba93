{#- The state top for `state.highstate`: every minion whose pillar vumi:deploy lists
    environments converges them (salt/vumi/init.sls), with nothing else to write:

      salt 'web*' state.highstate

    pillar/vumi/hosts/*.sls shows how a host gets its list (pillar/top.sls targets
    them). A site with its own top.sls adds the same entry to it instead.      -#}
base:
  'I@vumi:deploy:*':
    - match: compound
    - vumi
