{#- A fleet deploy, all or none: prepare one release everywhere; only if every
    targeted host prepared it, publish it and restart the webapps; otherwise
    publish nowhere and discard it on every host.

      salt-run state.orchestrate vumi.orch.deploy pillar='{"branch": "staging", "target": "web*"}'

    pillar: branch (the environment), target, tgt_type (default glob),
    release (default: UTC now, computed once here for every host), revision
    (pin, default: each host's branch tip), batch (restart phase: how many
    hosts at a time, "2" or "25%"; default all at once; each host restarts
    its ports one at a time, applying vumi.webapp).                        -#}
{%- set branch = pillar.get("branch") %}
{%- set target = pillar.get("target") %}
{%- set tgt_type = pillar.get("tgt_type", "glob") %}
{%- set revision = pillar.get("revision") %}
{%- set batch = pillar.get("batch") %}
{#- one name for the whole fleet, like Ansistrano's run-once release id #}
{%- set release = pillar.get("release") or salt["system.get_system_date_time"]("+0000")
      | replace("-", "") | replace(":", "") | replace(" ", "_") %}
{%- if not branch or not target %}
{%-   set hint = "Name the environment and the hosts: salt-run state.orchestrate vumi.orch.deploy pillar='" ~ '{"branch": "staging", "target": "web*"}' ~ "'" %}

vumi-orch-arguments-missing:
  test.fail_without_changes:
    - name: {{ hint | json }}
    - comment: {{ hint | json }}

{%- else %}
{%-   set where = branch ~ " release " ~ release ~ " on " ~ target %}
{%-   set prepare_kwarg = {"release": release} %}
{%-   if revision %}{% do prepare_kwarg.update({"revision": revision | string}) %}{% endif %}

{#- expect_minions: a targeted host that does not answer counts as failed, and
    any host whose vumi.prepare raised returns a non-zero retcode: either fails
    this step (no fail_minions: no host may fail) #}
vumi-prepare:
  salt.function:
    - name: vumi.prepare
    - tgt: {{ target | json }}
    - tgt_type: {{ tgt_type | json }}
    - expect_minions: True
    - arg: [{{ branch | json }}]
    - kwarg: {{ prepare_kwarg | json }}

{#- the stages for a failure: left out of a dry run (test=True), where an
    onfail also fires on the predictions (result None) of the stage it watches #}
{%-   if not opts.get("test") %}

vumi-discard:
  salt.function:
    - name: vumi.discard
    - tgt: {{ target | json }}
    - tgt_type: {{ tgt_type | json }}
    - arg: [{{ branch | json }}, {{ release | json }}]
    - onfail:
      - salt: vumi-prepare

{#- failhard: stop here, so publish and restart are not even listed as skipped #}
vumi-not-deployed:
  test.fail_without_changes:
    - name: {{ ("nothing deployed: " ~ where) | json }}
    - comment: {{ ("vumi.prepare failed on the hosts named in vumi-prepare above (the error of each is in its changes). Nothing was published and no webapp was restarted; vumi-discard removed release " ~ release ~ " from the hosts that had prepared it.") | json }}
    - failhard: True
    - onfail:
      - salt: vumi-prepare
{%-   endif %}

vumi-publish:
  salt.function:
    - name: vumi.publish
    - tgt: {{ target | json }}
    - tgt_type: {{ tgt_type | json }}
    - expect_minions: True
    - arg: [{{ branch | json }}, {{ release | json }}]
    - require:
      - salt: vumi-prepare

{%-   if not opts.get("test") %}

vumi-publish-incomplete:
  test.fail_without_changes:
    - name: {{ ("published on some hosts only: " ~ where) | json }}
    - comment: {{ ("vumi.publish failed on the hosts named in vumi-publish above; the others now have " ~ release ~ " as current, but no webapp was restarted. Check with vumi.current " ~ branch ~ ", then publish or roll back by hand.") | json }}
    - failhard: True
    - onfail:
      - salt: vumi-publish
{%-   endif %}

{#- salt.state, not salt.function: with batch, Salt drops each minion's retcode,
    so salt.function would count a host whose restart raised as a success;
    salt.state judges the state results themselves #}
vumi-restart:
  salt.state:
    - sls: vumi.webapp
    - tgt: {{ target | json }}
    - tgt_type: {{ tgt_type | json }}
    - expect_minions: True
    - pillar: {{ {"branch": branch} | json }}
{%-   if batch %}
    - batch: {{ batch | string | json }}
{%-   endif %}
    - require:
      - salt: vumi-publish
{%- endif %}
