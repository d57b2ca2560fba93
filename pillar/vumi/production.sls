vumi:
  environments:
    production:
      branch: production
      revision: null        # pin to a commit or tag; null follows the branch
      ports: [8000, 8001, 8002, 8003]
