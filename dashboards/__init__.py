"""Web assets served by the gateway: the staff app (``static/``) and Grafana dashboards."""
