{#- Deploy the environment named by pillar `branch` and keep its webapp running:
      salt 'web*' state.apply vumi pillar='{"branch": "staging"}'        -#}
{%- from "vumi/map.jinja" import vumi with context %}
{%- if not vumi.env %}

vumi-environment-missing:
  test.fail_without_changes:
    - name: >-
        Name the environment to deploy:
        state.apply vumi pillar='{"branch": "staging"}'

{%- else %}
{%-   set env = vumi.env %}
{%-   if vumi.sls.layout %}

vumi-{{ env }}-layout:
  file.directory:
    - names: {{ vumi.paths.tree | json }}
    - user: {{ vumi.settings.user | json }}
    - mode: "0755"
    - makedirs: True
{%-   endif %}
{%-   if vumi.sls.deploy %}

vumi-{{ env }}-deployed:
  vumi.deployed:
    - name: {{ env | json }}
{%-     if vumi.sls.layout %}
    - require:
      - file: vumi-{{ env }}-layout
{%-     endif %}
{%-   endif %}
{%-   if vumi.sls.webapp and vumi.settings.ports %}

vumi-{{ env }}-webapp:
  vumi.webapp_running:
    - name: {{ env | json }}
    - ports: {{ vumi.settings.ports | json }}
{%-     if vumi.sls.deploy %}
    - watch:
      - vumi: vumi-{{ env }}-deployed
{%-     endif %}
{%-   endif %}
{%- endif %}
