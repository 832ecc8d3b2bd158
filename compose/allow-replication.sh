#!/bin/sh
# Run once by the postgres image at initdb time (docker-entrypoint-initdb.d): let the
# compose network's standby (labs 13-14) stream WAL. "all" in pg_hba.conf's database
# column does not cover replication connections; this line does.
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
