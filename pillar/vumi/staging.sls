vumi:
  environments:
    staging:
      branch: staging
      revision: null        # pin to a commit or tag; null follows the branch
      ports: [8000, 8001]
