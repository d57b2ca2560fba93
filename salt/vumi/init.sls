{#- Deploy the environment named by pillar `branch` and keep its webapp running:
      salt 'web*' state.apply vumi pillar='{"branch": "staging"}'        -#}
{%- from "vumi/map.jinja" import vumi with context %}
{%- if not vumi.env %}

{#- the hint is both the name (shown even under test=True) and the comment #}
{%-   set hint = "Name the environment to deploy: state.apply vumi pillar='" ~ '{"branch": "staging"}' ~ "'" %}

vumi-environment-missing:
  test.fail_without_changes:
    - name: {{ hint | json }}
    - comment: {{ hint | json }}

{%- else %}
{%-   set env = vumi.env %}
{%-   if vumi.nginx.enabled %}

include:
  - vumi.nginx
{%-   endif %}
{%-   if vumi.sls.layout %}
{#-     a symlink planted in the tree (e.g. by its user) would have file.directory
        chown and chmod wherever it points, as root: refuse before touching anything #}
{%-     set planted = vumi.paths.planted %}
{%-     if planted %}

vumi-{{ env }}-layout-symlinks:
  test.fail_without_changes:
    - comment: {{ ("symlinks where the layout needs folders; refusing to use them: " ~ planted | join(", ")) | json }}
{%-     endif %}

vumi-{{ env }}-layout:
  file.directory:
    - names: {{ vumi.paths.tree | json }}
    - user: {{ vumi.settings.user | json }}
    - mode: "0755"
    - makedirs: True
    - allow_symlink: False
{%-     if planted %}
    - require:
      - test: vumi-{{ env }}-layout-symlinks
{%-     endif %}
{%-   endif %}
{%-   if vumi.sls.deploy %}

vumi-{{ env }}-deployed:
  vumi.deployed:
    - name: {{ env | json }}
{%-     if vumi.settings.health_check is none and vumi.settings.ports %}
{#-     webapps to protect: the switch waits for the new release to answer (pillar health_check decides otherwise) #}
    - health_check: True
{%-     endif %}
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
