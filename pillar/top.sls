base:
  '*':
    - vumi.defaults
    - vumi.staging
    - vumi.production
