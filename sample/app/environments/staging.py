from environments.default import *  # noqa: F401,F403

GREETING = "hello from staging"
