{#- What comes before anything of an environment is made: its deploy user (pillar
    vumi:manage_user), then vumi.ready: the
    pre-flight of vumi.check (the branch or pin exists upstream, the interpreter runs
    as the user, the folder can be made, the requirements are in the commit when the
    cache has it, room on the disk; init.sls adds: supervisord answers, when the
    webapp runs).
    init.sls, database.sls and nginx.sls include this file and make nothing of an
    environment until it passes: a misspelt branch or a wrong repo_url leaves no
    database, folder, site or program behind. -#}
{%- from "vumi/map.jinja" import vumi with context %}
{%- set users = [] %}
{%- for env in vumi.envs if vumi.manage_user and vumi.of[env].user != "root" and vumi.of[env].user not in users %}
{%-   do users.append(vumi.of[env].user) %}

{#- pillar vumi:manage_user: the deploy user, a system account #}
vumi-user-{{ vumi.of[env].user }}:
  user.present:
    - name: {{ vumi.of[env].user | json }}
    - system: true
{%- endfor %}
{%- for env in vumi.envs %}

vumi-{{ env }}-ready:
  vumi.ready:
    - name: {{ env | json }}
{%-   if vumi.of[env].user in users %}
    - require:
      - user: vumi-user-{{ vumi.of[env].user }}
{%-   endif %}
{%- endfor %}
