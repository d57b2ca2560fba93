# Settings for every environment; vumi:environments:<env> overrides them, and
# keyword arguments to a vumi.* function override both. Schema: README.md.
vumi:
  base_dir: /var/praekelt
  app: vumi
  repo_url: http://github.com/praekelt/vumi.git
  # requirements: unset, what to install is found in the code (uv.lock, poetry.lock,
  # requirements.txt, config/requirements.pip, pyproject.toml: docs/settings-reference.md)
  user: root
  keep_releases: 5
  ports: [8000]
  host: 127.0.0.1
  reuse_virtualenvs: true
  settings_module: "environments.{env}"
  # gunicorn, run by supervisord; {wsgi}: wsgi_module, else the one package with a wsgi.py
  webapp_command: "{venv}/bin/gunicorn --bind {host}:{port} --workers 2 --threads 4 {wsgi}"
  supervisor:
    conf_dir: /etc/supervisor/conf.d
    conf_file: /etc/supervisor/supervisord.conf
    manage_service: true          # the SLS installs and runs Debian's supervisor
    log_max_bytes: 52428800       # each webapp's log is rotated at 50 MiB...
    log_backups: 10               # ...keeping 10
