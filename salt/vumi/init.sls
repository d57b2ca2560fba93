{#- Deploy environments and keep their webapps running:
      salt 'web*' state.apply vumi pillar='{"branch": "staging"}'    one environment
      salt 'web*' state.highstate                                    every one in pillar vumi:deploy
    Renders from pillar alone (map.jinja); the states read the settings when they run. -#}
{%- from "vumi/map.jinja" import vumi with context %}
{%- if vumi.problem %}

vumi-deploy-invalid:
  test.fail_without_changes:
    - name: {{ vumi.problem | json }}
    - comment: {{ vumi.problem | json }}

{%- elif not vumi.envs %}

{#- the hint is both the name (shown even under test=True) and the comment #}
{%-   set hint = "Name the environment to deploy: state.apply vumi pillar='" ~ '{"branch": "staging"}' ~ "', or list this host's environments in pillar vumi:deploy" %}

vumi-environment-missing:
  test.fail_without_changes:
    - name: {{ hint | json }}
    - comment: {{ hint | json }}

{%- else %}
{%-   set with_nginx = [] %}
{%-   for env in vumi.envs if vumi.of[env].nginx.enabled %}{% do with_nginx.append(env) %}{% endfor %}
{%-   set with_database = [] %}
{%-   for env in vumi.envs if vumi.of[env].database %}{% do with_database.append(env) %}{% endfor %}

include:
  - vumi.ready
  - vumi.supervisor
{%-   if with_database %}
  - vumi.database
{%-   endif %}
{%-   if with_nginx %}
  - vumi.nginx
{%-   endif %}
{%-   for env in vumi.envs %}

{#- first, and failing hard: a typo in pillar stops the run before anything is made #}
vumi-{{ env }}-settings:
  vumi.settings_valid:
    - name: {{ env | json }}
    - order: 1
    - failhard: true
{%-   endfor %}
{%-   set webapps = [] %}
{%-   for env in vumi.envs if vumi.of[env].sls.webapp %}{% do webapps.append(env) %}{% endfor %}
{%-   if webapps %}

{#- the webapp runs under supervisord here: it must answer before anything is made #}
extend:
{%-     for env in webapps %}
  vumi-{{ env }}-ready:
    vumi:
      - supervised: true
{%-       if vumi.supervisor.manage_service %}
      - require:
        - service: vumi-supervisor-running
{%-       endif %}
{%-     endfor %}
{%-   endif %}
{%-   for env in vumi.envs %}
{%-     set sls = vumi.of[env].sls %}
{%-     if sls.layout %}

{#- the environment's folders, made as its user; a symlink planted where a folder
    belongs (e.g. by that user) is refused before anything is touched #}
vumi-{{ env }}-layout:
  vumi.tree:
    - name: {{ env | json }}
    - require:
      - vumi: vumi-{{ env }}-ready
{%-       if vumi.of[env].nginx.enabled and vumi.of[env].named %}
      - vumi-{{ env }}-nginx-site
{%-       endif %}
{%-     endif %}
{%-     if sls.deploy %}

vumi-{{ env }}-deployed:
  vumi.deployed:
    - name: {{ env | json }}
{%-       if sls.webapp %}
    {#- the webapp state restarts the ports after a deploy: supervisord must answer first #}
    - supervised: true
{%-       endif %}
    - require:
      - vumi: vumi-{{ env }}-ready
{%-       if vumi.of[env].nginx.enabled and vumi.of[env].named %}
      - vumi-{{ env }}-nginx-site
{%-       endif %}
{%-       if sls.layout %}
      - vumi: vumi-{{ env }}-layout
{%-       endif %}
{%-       if vumi.of[env].database %}
      - vumi-{{ env }}-database
{%-       endif %}
{%-     endif %}
{%-     if sls.webapp %}

{#- the environment's configured ports (none: nothing to run) #}
vumi-{{ env }}-webapp:
  vumi.webapp_running:
    - name: {{ env | json }}
    - require:
      - vumi: vumi-{{ env }}-ready
{%-       if vumi.supervisor.manage_service %}
      - service: vumi-supervisor-running
{%-       endif %}
{%-       if sls.deploy %}
    - watch:
      - vumi: vumi-{{ env }}-deployed
{%-       endif %}
{%-     endif %}
{%-     if sls.deploy %}

{#- the deploy user's crontab: pillar cron's jobs, each run in current; dropped ones removed #}
vumi-{{ env }}-cron:
  vumi.cron_jobs:
    - name: {{ env | json }}
    - require:
      - vumi: vumi-{{ env }}-deployed
{%-     endif %}
{%-   endfor %}
{%- endif %}
