{#- A fleet deploy, all or none to the end:

      salt-run saltutil.sync_all          # once: the vumi runner and vumi_fleet state on the master
      salt-run state.orchestrate vumi.orch.deploy pillar='{"branch": "staging", "target": "web*"}'

    One commit (the branch tip, resolved once; or pillar revision) and one release
    name (pillar release, default UTC now) for every host. Prepared and health-checked
    on every host (each then refuses other deploys until the end), published only if
    every host prepared, then the webapps restarted (pillar batch: "2" or "25%" hosts
    at a time; default all at once; each host one port at a time). After a failure on
    any host at any phase, every host is back on the release it had, serving; the
    output leads with the failing host and why. test=True names the hosts, the
    revision and the release, and changes nothing.

    pillar: branch, target, tgt_type (default glob), revision, release, batch,
    timeout (seconds each phase waits for every host; a host silent that long fails
    the run, named; default 120), hold (seconds a host stays held after the run's
    last heartbeat, should it die; default 90), canary (hosts, "1" or "10%", that go
    first and are watched for canary_wait seconds, default 30), force (recover a
    fleet a dead run left split or held first).                                  -#}
{%- set branch = pillar.get("branch") %}
{%- set target = pillar.get("target") %}
{%- if not branch or not target %}
{%-   set hint = "Name the environment and the hosts: salt-run state.orchestrate vumi.orch.deploy pillar='" ~ '{"branch": "staging", "target": "web*"}' ~ "'" %}

vumi-orch-arguments-missing:
  test.fail_without_changes:
    - name: {{ hint | json }}
    - comment: {{ hint | json }}

{%- else %}

vumi-fleet-deploy:
  vumi_fleet.deployed:
    - name: {{ branch | json }}
    - tgt: {{ target | json }}
    - tgt_type: {{ pillar.get("tgt_type", "glob") | json }}
{%-   for key in ("revision", "release", "batch", "hold", "timeout", "canary", "canary_wait", "force") if pillar.get(key) is not none %}
    - {{ key }}: {{ pillar[key] | json if key in ("hold", "timeout", "canary_wait", "force") else pillar[key] | string | json }}
{%-   endfor %}
{%- endif %}
