"""The sample web application deployed by vumi-salt."""
