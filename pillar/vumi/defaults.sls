# Settings for every environment; vumi:environments:<env> overrides them, and
# keyword arguments to a vumi.* function override both. Schema: README.md.
vumi:
  base_dir: /var/praekelt
  app: vumi
  repo_url: http://github.com/praekelt/vumi.git
  requirements: config/requirements.pip
  user: root
  keep_releases: 5
  ports: [8000]
  host: 127.0.0.1
  reuse_virtualenvs: true
  settings_module: "environments.{env}"
  webapp_command: "{venv}/bin/python manage.py runserver {host}:{port} --settings={settings}"
