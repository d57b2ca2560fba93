{#- supervisord, which runs the webapps (one program per port, written by the vumi
    states into vumi:supervisor:conf_dir): Debian's package and service. With
    vumi:supervisor:manage_service false, a supervisord of your own is used as it is
    (the demo and the tests start one from .venv), named by vumi:supervisor:conf_file. -#}
{%- from "vumi/map.jinja" import vumi with context %}
{%- if vumi.supervisor.manage_service %}

vumi-supervisor-installed:
  pkg.installed:
    - name: supervisor

vumi-supervisor-running:
  service.running:
    - name: supervisor
    - enable: true
    - require:
      - pkg: vumi-supervisor-installed
{%- endif %}
