from sampleapp.settings import *  # noqa: F401,F403
