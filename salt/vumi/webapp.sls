{#- Only the webapp part of vumi: every configured port runs the current release
    (stopped ports are started, ports on another release restarted, one at a time).
    The restart phase of the fleet deploy (vumi.orch.deploy), and usable alone:
      salt 'web*' state.apply vumi.webapp pillar='{"branch": "staging"}'       -#}
{%- from "vumi/map.jinja" import vumi with context %}
{%- if not vumi.env %}
{%-   set hint = "Name the environment: state.apply vumi.webapp pillar='" ~ '{"branch": "staging"}' ~ "'" %}

vumi-environment-missing:
  test.fail_without_changes:
    - name: {{ hint | json }}
    - comment: {{ hint | json }}

{%- else %}

vumi-{{ vumi.env }}-webapp:
  vumi.webapp_running:
    - name: {{ vumi.env | json }}
{%- endif %}
