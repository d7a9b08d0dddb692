"""backupd: hybrid (pg_dump + JSON) backups of a Supabase/PostgreSQL database, run by systemd."""

__version__ = "0.1.0"
