-- trygg: PostgreSQL role and database for the shared journal (docs/deployment.md, docs/postgres.md)
--
-- Run once, as a superuser, on the primary:
--
--     sudo -u postgres psql -v ON_ERROR_STOP=1 -f setup.sql
--
-- then give the gateway role a password (interactive, so it never lands in a file or in
-- the shell history):
--
--     sudo -u postgres psql -c '\password trygg_gw'
--
-- What the gateway needs, and why it gets no more:
--
-- * It creates and migrates its own tables when it starts (journal, leases, cluster
--   presence; advisory-locked, so several gateways may start at once) and creates the
--   monthly journal partitions ahead of time while it runs. Creating a partition needs
--   ownership of the partitioned table, so the gateway's login role owns the `trygg`
--   schema and everything in it. Append-only triggers still refuse UPDATE, DELETE and
--   TRUNCATE on the journal tables, whoever asks.
-- * It needs nothing outside that schema: no superuser, no CREATEDB, no CREATEROLE, no
--   replication, no access to other databases. Advisory locks and LISTEN/NOTIFY need no
--   grants.
-- * Everything PUBLIC could do in the new database is revoked first.
--
-- Requires PostgreSQL 13 or later (BEFORE row triggers on partitioned tables).

\set ON_ERROR_STOP 1

-- The gateways' login. One role for every gateway instance: they share the journal.
-- CONNECTION LIMIT: about 5 connections per gateway (journal pool 2, lease manager 1,
-- journal listener 1, short-lived ones for presence and organisation changes); 40 leaves
-- room for 4 gateways, rolling restarts and an operator's psql.
CREATE ROLE trygg_gw LOGIN
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    CONNECTION LIMIT 40;

-- An acked alarm must survive a crash: never let a session of this role run with
-- synchronous_commit off, even if someone lowers it server-wide. With synchronous
-- replication (synchronous_standby_names) 'on' also waits for the standby's flush.
ALTER ROLE trygg_gw SET synchronous_commit = 'on';

-- The database belongs to the administrator (postgres), not to the gateway.
CREATE DATABASE trygg ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE trygg FROM PUBLIC;
GRANT CONNECT ON DATABASE trygg TO trygg_gw;

\connect trygg

-- Nobody but the schema owner creates objects; PostgreSQL 15 already revokes CREATE on
-- public from PUBLIC, older versions do not.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- trygg's own schema, owned by the gateway role (see above), found first on its path.
CREATE SCHEMA trygg AUTHORIZATION trygg_gw;
ALTER ROLE trygg_gw IN DATABASE trygg SET search_path = trygg;

-- Optional: a read-only role for reports and dashboards (KPIs straight from the journal).
-- Run after the first gateway has started, so the tables exist:
--
--     CREATE ROLE trygg_read LOGIN NOINHERIT;
--     GRANT CONNECT ON DATABASE trygg TO trygg_read;
--     GRANT USAGE ON SCHEMA trygg TO trygg_read;
--     GRANT SELECT ON ALL TABLES IN SCHEMA trygg TO trygg_read;
--     ALTER DEFAULT PRIVILEGES FOR ROLE trygg_gw IN SCHEMA trygg
--         GRANT SELECT ON TABLES TO trygg_read;   -- future monthly partitions too
--
-- Optional: a monitoring login for a Prometheus postgres exporter:
--
--     CREATE ROLE trygg_monitor LOGIN;
--     GRANT pg_monitor TO trygg_monitor;

-- pg_hba.conf (not SQL): let only the gateway hosts in, over TLS, with SCRAM, e.g.
--
--     hostssl  trygg  trygg_gw  10.0.10.11/32  scram-sha-256   # gw1
--     hostssl  trygg  trygg_gw  10.0.10.12/32  scram-sha-256   # gw2
--
-- and in postgresql.conf: ssl = on, password_encryption = scram-sha-256,
-- synchronous_commit = on (the default), and see docs/deployment.md for
-- max_connections, WAL archiving and replication.
--
-- The gateways' DSN then reads (password from PGPASSWORD or a pgpass file):
--
--     journal_dsn = "host=db.example port=5432 dbname=trygg user=trygg_gw sslmode=verify-full sslrootcert=/etc/trygg/pg-ca.pem"
