"""The minimal Supabase skeleton a Supabase-made dump needs in a plain PostgreSQL server.

A dump made by `supabase db dump` (or backupd's `dump.tool = "supabase"`) leaves out what the
platform manages: the reserved roles, the `auth`, `storage` and `extensions` schemas. Your own
objects still refer to them (grants to `anon`/`authenticated`, RLS policies calling `auth.uid()`,
foreign keys to `auth.users`, extensions created `WITH SCHEMA "extensions"`), and the data dump
carries the rows of `auth.*` and `storage.*`. `skeleton_sql()` creates those, idempotently, so the
dump restores into a plain server. It is not a Supabase: no GoTrue, no Storage API, no Realtime;
docs/supabase.md says when it is and isn't enough.
"""

from __future__ import annotations

RESERVED_ROLES: tuple[tuple[str, str], ...] = (
    ("anon", "NOLOGIN NOINHERIT"),
    ("authenticated", "NOLOGIN NOINHERIT"),
    ("service_role", "NOLOGIN NOINHERIT BYPASSRLS"),
    ("authenticator", "LOGIN NOINHERIT"),
    ("supabase_admin", "NOLOGIN"),
    ("supabase_auth_admin", "NOLOGIN NOINHERIT"),
    ("supabase_storage_admin", "NOLOGIN NOINHERIT"),
    ("supabase_realtime_admin", "NOLOGIN NOINHERIT"),
    ("supabase_replication_admin", "NOLOGIN"),
    ("supabase_read_only_user", "NOLOGIN BYPASSRLS"),
    ("dashboard_user", "NOLOGIN"),
    ("pgbouncer", "NOLOGIN"),
)
SCHEMAS: tuple[str, ...] = ("extensions", "auth", "storage")

_ROLES_SQL = "\n".join(
    f"""DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{name}') THEN
    CREATE ROLE "{name}" {attributes};
  END IF;
END $$;"""
    for name, attributes in RESERVED_ROLES
)

_BODY = r"""
GRANT "anon", "authenticated", "service_role" TO "authenticator";

CREATE SCHEMA IF NOT EXISTS "extensions";
CREATE SCHEMA IF NOT EXISTS "auth" AUTHORIZATION "supabase_auth_admin";
CREATE SCHEMA IF NOT EXISTS "storage" AUTHORIZATION "supabase_storage_admin";
GRANT USAGE ON SCHEMA "extensions" TO "anon", "authenticated", "service_role";
GRANT USAGE ON SCHEMA "auth" TO "anon", "authenticated", "service_role", "dashboard_user";
GRANT USAGE ON SCHEMA "storage" TO "anon", "authenticated", "service_role", "dashboard_user";
GRANT USAGE ON SCHEMA "public" TO "anon", "authenticated", "service_role";

-- the JWT helpers RLS policies call (PostgREST sets request.jwt.claims per request)
CREATE OR REPLACE FUNCTION "auth"."jwt"() RETURNS jsonb LANGUAGE sql STABLE AS $f$
  SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                  nullif(current_setting('request.jwt.claims', true), ''))::jsonb
$f$;
CREATE OR REPLACE FUNCTION "auth"."uid"() RETURNS uuid LANGUAGE sql STABLE AS $f$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$f$;
CREATE OR REPLACE FUNCTION "auth"."role"() RETURNS text LANGUAGE sql STABLE AS $f$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text
$f$;
CREATE OR REPLACE FUNCTION "auth"."email"() RETURNS text LANGUAGE sql STABLE AS $f$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.email', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email'))::text
$f$;
GRANT EXECUTE ON FUNCTION "auth"."jwt"(), "auth"."uid"(), "auth"."role"(), "auth"."email"()
  TO "anon", "authenticated", "service_role";

DO $$ BEGIN
  CREATE TYPE "auth"."aal_level" AS ENUM ('aal1', 'aal2', 'aal3');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS "auth"."instances" (
    "id" uuid PRIMARY KEY,
    "uuid" uuid,
    "raw_base_config" text,
    "created_at" timestamptz,
    "updated_at" timestamptz
);

CREATE TABLE IF NOT EXISTS "auth"."users" (
    "instance_id" uuid,
    "id" uuid PRIMARY KEY,
    "aud" varchar(255),
    "role" varchar(255),
    "email" varchar(255),
    "encrypted_password" varchar(255),
    "email_confirmed_at" timestamptz,
    "invited_at" timestamptz,
    "confirmation_token" varchar(255),
    "confirmation_sent_at" timestamptz,
    "recovery_token" varchar(255),
    "recovery_sent_at" timestamptz,
    "email_change_token_new" varchar(255),
    "email_change" varchar(255),
    "email_change_sent_at" timestamptz,
    "last_sign_in_at" timestamptz,
    "raw_app_meta_data" jsonb,
    "raw_user_meta_data" jsonb,
    "is_super_admin" boolean,
    "created_at" timestamptz,
    "updated_at" timestamptz,
    "phone" text UNIQUE DEFAULT NULL,
    "phone_confirmed_at" timestamptz,
    "phone_change" text DEFAULT '',
    "phone_change_token" varchar(255) DEFAULT '',
    "phone_change_sent_at" timestamptz,
    "confirmed_at" timestamptz GENERATED ALWAYS AS (LEAST("email_confirmed_at", "phone_confirmed_at")) STORED,
    "email_change_token_current" varchar(255) DEFAULT '',
    "email_change_confirm_status" smallint DEFAULT 0
        CHECK ("email_change_confirm_status" >= 0 AND "email_change_confirm_status" <= 2),
    "banned_until" timestamptz,
    "reauthentication_token" varchar(255) DEFAULT '',
    "reauthentication_sent_at" timestamptz,
    "is_sso_user" boolean NOT NULL DEFAULT false,
    "deleted_at" timestamptz,
    "is_anonymous" boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS "auth"."identities" (
    "provider_id" text NOT NULL,
    "user_id" uuid NOT NULL REFERENCES "auth"."users" ("id") ON DELETE CASCADE,
    "identity_data" jsonb NOT NULL,
    "provider" text NOT NULL,
    "last_sign_in_at" timestamptz,
    "created_at" timestamptz,
    "updated_at" timestamptz,
    "email" text GENERATED ALWAYS AS (lower("identity_data" ->> 'email')) STORED,
    "id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    UNIQUE ("provider_id", "provider")
);

CREATE TABLE IF NOT EXISTS "auth"."sessions" (
    "id" uuid PRIMARY KEY,
    "user_id" uuid NOT NULL REFERENCES "auth"."users" ("id") ON DELETE CASCADE,
    "created_at" timestamptz,
    "updated_at" timestamptz,
    "factor_id" uuid,
    "aal" "auth"."aal_level",
    "not_after" timestamptz,
    "refreshed_at" timestamp,
    "user_agent" text,
    "ip" inet,
    "tag" text
);

CREATE TABLE IF NOT EXISTS "auth"."refresh_tokens" (
    "instance_id" uuid,
    "id" bigserial PRIMARY KEY,
    "token" varchar(255) UNIQUE,
    "user_id" varchar(255),
    "revoked" boolean,
    "created_at" timestamptz,
    "updated_at" timestamptz,
    "parent" varchar(255),
    "session_id" uuid REFERENCES "auth"."sessions" ("id") ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS "auth"."audit_log_entries" (
    "instance_id" uuid,
    "id" uuid PRIMARY KEY,
    "payload" json,
    "created_at" timestamptz,
    "ip_address" varchar(64) NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS "auth"."schema_migrations" ("version" varchar(255) PRIMARY KEY);

CREATE TABLE IF NOT EXISTS "storage"."buckets" (
    "id" text PRIMARY KEY,
    "name" text NOT NULL UNIQUE,
    "owner" uuid,
    "created_at" timestamptz DEFAULT now(),
    "updated_at" timestamptz DEFAULT now(),
    "public" boolean DEFAULT false,
    "avif_autodetection" boolean DEFAULT false,
    "file_size_limit" bigint,
    "allowed_mime_types" text[],
    "owner_id" text
);

CREATE TABLE IF NOT EXISTS "storage"."objects" (
    "id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "bucket_id" text REFERENCES "storage"."buckets" ("id"),
    "name" text,
    "owner" uuid,
    "created_at" timestamptz DEFAULT now(),
    "updated_at" timestamptz DEFAULT now(),
    "last_accessed_at" timestamptz DEFAULT now(),
    "metadata" jsonb,
    "path_tokens" text[] GENERATED ALWAYS AS (string_to_array("name", '/')) STORED,
    "version" text,
    "owner_id" text,
    "user_metadata" jsonb,
    UNIQUE ("bucket_id", "name")
);

CREATE TABLE IF NOT EXISTS "storage"."migrations" (
    "id" integer PRIMARY KEY,
    "name" varchar(100) NOT NULL UNIQUE,
    "hash" varchar(40) NOT NULL,
    "executed_at" timestamp DEFAULT CURRENT_TIMESTAMP
);

ALTER TABLE "storage"."objects" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "storage"."buckets" ENABLE ROW LEVEL SECURITY;
GRANT ALL ON ALL TABLES IN SCHEMA "auth" TO "supabase_auth_admin", "dashboard_user";
GRANT ALL ON ALL SEQUENCES IN SCHEMA "auth" TO "supabase_auth_admin", "dashboard_user";
GRANT ALL ON ALL TABLES IN SCHEMA "storage" TO "supabase_storage_admin", "service_role", "dashboard_user";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "storage" TO "anon", "authenticated";
"""


def skeleton_sql() -> str:
    """SQL that prepares a plain PostgreSQL database for a Supabase-made dump: the reserved roles
    (anon, authenticated, service_role, authenticator, supabase_* ...), the schemas `extensions`,
    `auth` and `storage` with the JWT helpers (`auth.uid()`, `auth.role()`, `auth.jwt()`,
    `auth.email()`) and the core tables (`auth.users`, `auth.identities`, `auth.sessions`,
    `auth.refresh_tokens`, `auth.audit_log_entries`, `auth.instances`, `storage.buckets`,
    `storage.objects`). Idempotent: running it twice, or on a server that has some of it, is fine.
    Needs a superuser (it creates roles). Never raises."""
    return ("-- backupd: minimal Supabase skeleton (roles, auth/storage/extensions schemas)\n"
            "SET client_min_messages = warning;\n" + _ROLES_SQL + "\n" + _BODY)


def skeleton_roles_sql() -> str:
    """The reserved roles alone (cluster-wide; needs CREATEROLE): a dry run creates them as the
    scratch server's own role, then loads `skeleton_body_sql()` as the unprivileged restore role."""
    return "SET client_min_messages = warning;\n" + _ROLES_SQL + "\n"


def skeleton_body_sql() -> str:
    """The schemas, functions and tables of the skeleton (what a database owner may create)."""
    return "-- backupd: minimal Supabase skeleton (auth/storage/extensions schemas)\n" + _BODY
