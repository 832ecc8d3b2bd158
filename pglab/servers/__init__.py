"""The PostgreSQL servers of the course: find or start the primary, its DSNs, PgBouncer.

Arrows point one way: `servers` imports only `pglab.paths`; the rest of the toolkit
imports `servers`.
"""
