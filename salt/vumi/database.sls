{#- The seed's "set up the database" step, declared: a PostgreSQL role and database for
    each environment whose settings have `database` (pillar vumi:database, or per
    environment), with Salt's own postgres_user / postgres_database states. The app
    gets the connection as DATABASE_URL (database:url_env) in every process the
    bundle runs: webapp, hooks, execute, managepy, health check.
      salt 'db*' state.apply vumi.database pillar='{"branch": "staging"}'
    (`vumi` includes it when pillar vumi:database is set). Like nginx.sls, this file
    asks the host for the merged settings (vumi.settings) while it renders. Nothing is
    made before vumi.ready passes, nor, with nginx on, before the site is written
    (this file includes vumi.nginx then). -#}
{%- from "vumi/map.jinja" import vumi with context %}

{%- set sites = [] %}
{%- for env in vumi.envs if vumi.of[env].nginx.enabled and vumi.of[env].named %}{% do sites.append(env) %}{% endfor %}

include:
  - vumi.ready
{%- if sites %}
  - vumi.nginx
{%- endif %}
{%- for env in vumi.envs %}
{%-   set problem = salt["vumi.settings_problem"](env) %}
{%-   set db = none if problem else salt["vumi.settings"](env, show_secrets=True).database %}
{%-   if problem %}

{#- a typo or a bad value in pillar: said here (init.sls's vumi.settings_valid says it first) #}
vumi-{{ env }}-database:
  test.fail_without_changes:
    - name: {{ problem | json }}
    - comment: {{ problem | json }}
{%-   elif db %}
{%-     set admin = {"db_host": db.host, "db_port": db.port, "user": db.runas} %}
{%-     if db.admin_user %}{% do admin.update({"db_user": db.admin_user}) %}{% endif %}
{%-     if db.admin_password %}{% do admin.update({"db_password": db.admin_password}) %}{% endif %}

vumi-{{ env }}-database-role:
  postgres_user.present:
    - name: {{ db.user | json }}
    - password: {{ db.password | json }}
    - encrypted: scram-sha-256
    - login: true
    - createdb: false
    - superuser: false
{%-     for key, value in admin | dictsort %}
    - {{ key }}: {{ value | json }}
{%-     endfor %}
    - require:
      - vumi: vumi-{{ env }}-ready
{%-       if env in sites %}
      {#- a site nginx refuses (a bad listen) stops the environment before its database is made #}
      - vumi-{{ env }}-nginx-site
{%-       endif %}

vumi-{{ env }}-database:
  postgres_database.present:
    - name: {{ db.name | json }}
    - owner: {{ db.user | json }}
{%-     for key, value in admin | dictsort %}
    - {{ key }}: {{ value | json }}
{%-     endfor %}
    - require:
      - postgres_user: vumi-{{ env }}-database-role
{%-   endif %}
{%- endfor %}
