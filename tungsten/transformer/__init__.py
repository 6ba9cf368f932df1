"""The schema transformer: intent (networks, policies, security groups, routers) to derived
config (route targets, routing-instance connections, ACLs).  See docs/transformer.md."""
