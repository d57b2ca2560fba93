from django.db import models


class Visit(models.Model):
    """One request to /visits/: the rows the site reads back from its database."""

    path = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)
