{#- A reactor that posts fleet runs and failed deploys to a chat webhook, Salt's way
    (pillar `notify` does the same without a reactor). In the master's config:

      reactor:
        - 'vumi/fleet/*/end':
          - salt://vumi/reactor/chat.sls
        - 'vumi/deploy/*/*':
          - salt://vumi/reactor/chat.sls

    and the webhook's URL in the master's config too (a reactor sees no pillar):

      vumi_reactor_chat_url: https://hooks.slack.com/services/T0/B0/XXXX

    Each stage event of a host's deploy fires vumi/deploy/<env>/<stage>; only a failed
    stage is posted. The fleet run's end carries its result, hosts, release and revision. -#}
{%- set url = opts.get("vumi_reactor_chat_url") %}
{%- set fleet = tag.startswith("vumi/fleet/") %}
{%- set stage = data.get("data") or {} %}{#- a minion's event.send: its payload under data, its id beside #}
{%- if url and (fleet or stage.get("outcome") == "failed") %}
{%-   if fleet %}
{%-     set text = "fleet deploy of %s release %s to %s: %s" % (data.get("branch"), data.get("release"), ", ".join(data.get("hosts") or []), "ok" if data.get("result") else "FAILED") %}
{%-   else %}
{%-     set text = "%s: deploy of %s failed at %s: %s" % (data.get("id"), stage.get("env"), stage.get("stage"), stage.get("error")) %}
{%-   endif %}

vumi-reactor-chat:
  runner.http.query:
    - args:
      - url: {{ url | json }}
      - method: POST
      - header_dict: {"Content-Type": "application/json"}
      - data: {{ {"text": text} | json | json }}
{%- endif %}
