{#- nginx in front of the webapp ports of an environment:
      salt 'web*' state.apply vumi.nginx pillar='{"branch": "staging"}'
    (`vumi` includes it for the environments whose vumi:nginx:enabled is true). The
    site points at the `current` link, so a deploy changes nothing here; only other
    ports, names or timeouts do, and then nginx is reloaded. Settings: defaults.yaml.
    The site needs the environment's merged settings (app, host, ports), so unlike
    init.sls this file asks the host for them (vumi.settings) while it renders. -#}
{%- from "vumi/map.jinja" import vumi with context %}

include:
  - vumi.ready
{%- set sites = [] %}
{#- a site only for an environment this host deploys: one its pillar names (a typo gets none) #}
{%- for env in vumi.envs if (vumi.env or vumi.of[env].nginx.enabled) and vumi.of[env].named %}
{%-   set nginx = vumi.of[env].nginx %}
{#- what stops the site: a typo or bad value in pillar (init.sls's vumi.settings_valid says it
      first), or what nginx could not serve #}
{%-   set refused = salt["vumi.settings_problem"](env) %}
{%-   if not refused %}
{%-     set settings = salt["vumi.settings"](env) %}
{%-     set paths = salt["vumi.paths"](env) %}
{%-     set name = paths.name %}
{%-     set site = nginx.conf_dir.rstrip("/") ~ "/" ~ name ~ ".conf" %}
{%-     set current = paths.current %}
{#-     a wildcard listen address is reached on loopback #}
{%-     set host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(settings.host, settings.host) %}
{%-     set host = "[" ~ host ~ "]" if ":" in host and not host.startswith("[") else host %}
{%-     set servers = [] %}
{%-     for port in settings.ports %}
{%-       do servers.append(host ~ ":" ~ port) %}
{%-     endfor %}
{%-     set static = nginx.static %}
{%-     if static %}
{%-       set static = static.strip("/") %}
{%-     endif %}
{#-     nginx -t on the new site alone, before it replaces the old one: a wrapper
      config includes it inside http {}. Salt appends the temporary file's path ($1). #}
{%-     set temps = [] %}
{%-     for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] %}{% do temps.append(kind ~ "_temp_path %s/" ~ kind ~ ";") %}{% endfor %}
{%-     set check = "set -e; d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; "
                  ~ "printf 'pid %s/nginx.pid;\\nerror_log %s/error.log;\\nevents {}\\nhttp {\\n    access_log off;\\n    "
                  ~ (temps | join(" ")) ~ "\\n    include \"%s\";\\n}\\n' \"$d\" \"$d\" "
                  ~ (['"$d"'] * 5) | join(" ") ~ " \"$1\" >\"$d/nginx.conf\"; "
                  ~ nginx.test_cmd ~ " -p \"$d/\" -c \"$d/nginx.conf\"" %}
{%-     set media = nginx.media.strip("/") if nginx.media else none %}
{%-     if not settings.ports %}
{%-       set refused = "nginx needs at least one webapp port: set vumi:environments:" ~ env ~ ":ports" %}
{%-     elif (nginx.ssl_certificate is none) != (nginx.ssl_certificate_key is none) %}
{%-       set refused = "nginx: ssl_certificate and ssl_certificate_key go together: set both, or neither" %}
{%-     elif media and (".." in media.split("/") or "\\" in media) %}
{%-       set refused = "invalid vumi:nginx:media " ~ nginx.media ~ ": must be a folder inside shared/" %}
{%-     elif nginx.maintenance_allow is string or nginx.maintenance_allow | reject("match", "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$") | list %}
{%-       set refused = "invalid vumi:nginx:maintenance_allow " ~ (nginx.maintenance_allow | json) ~ ": a list of addresses or CIDR blocks (10.0.0.0/8)" %}
{%-     elif nginx.retry_after is not number or nginx.retry_after < 0 %}
{%-       set refused = "invalid vumi:nginx:retry_after " ~ (nginx.retry_after | json) ~ ": seconds" %}
{%-     elif static and (".." in static.split("/") or "\\" in static) %}
{%-       set refused = "invalid vumi:nginx:static " ~ nginx.static ~ ": must be a folder inside the code" %}
{%-     endif %}
{%-   endif %}
{%-   if refused %}

vumi-{{ env }}-nginx-site:
  test.fail_without_changes:
    - name: {{ refused | json }}
    - comment: {{ refused | json }}
{%-   else %}

vumi-{{ env }}-nginx-site:
  file.managed:
    - name: {{ site | json }}
    - source: salt://vumi/files/nginx-site.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        env: {{ env | json }}
        upstream: {{ name | json }}
        servers: {{ servers | json }}
        listen: {{ nginx.listen | string | json }}
        server_name: {{ nginx.server_name | string | json }}
        connect_timeout: {{ nginx.connect_timeout | string | json }}
        static_url: {{ nginx.static_url | json }}
        static_dir: {{ ((current ~ "/" ~ settings.app ~ "/" ~ static ~ "/") if static else none) | json }}
        media_url: {{ nginx.media_url | json }}
        media_dir: {{ ((salt["vumi.paths"](env).shared ~ "/" ~ media ~ "/") if media else none) | json }}
        maintenance_page: {{ paths.maintenance | json }}
        maintenance_allow: {{ nginx.maintenance_allow | json }}
        retry_after: {{ nginx.retry_after | int }}
        health_path: {{ settings.health_path | json }}
        ssl_certificate: {{ nginx.ssl_certificate | json }}
        ssl_certificate_key: {{ nginx.ssl_certificate_key | json }}
{%-     if nginx.test_cmd %}
    - check_cmd: {{ ("/bin/sh -c " ~ (check | quote) ~ " vumi-nginx-check") | json }}
{%-     endif %}
    - require:
      - vumi: vumi-{{ env }}-ready
{%-     if vumi.nginx.manage_package %}
      - pkg: vumi-nginx-installed
{%-     endif %}
{%-     do sites.append("vumi-" ~ env ~ "-nginx-site") %}
{%-   endif %}
{%- endfor %}
{%- if sites and vumi.nginx.manage_package %}

vumi-nginx-installed:
  pkg.installed:
    - name: {{ vumi.nginx.package | json }}
{%- endif %}
{%- if sites and vumi.nginx.manage_service %}

vumi-nginx-running:
  service.running:
    - name: {{ vumi.nginx.service | json }}
    - enable: True
    - reload: True
    - watch:
{%-   for site in sites %}
      - file: {{ site | json }}
{%-   endfor %}
{%- endif %}
{%- if not vumi.envs %}

vumi-nginx-environment-missing:
  test.fail_without_changes:
    - name: {{ "Name the environment: state.apply vumi.nginx pillar='{\"branch\": \"staging\"}'" | json }}
{%- endif %}
