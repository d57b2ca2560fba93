# Hosts that serve production and a staging copy beside it (give them other ports).
vumi:
  deploy: [production, staging]
