//! The two roles of a service's schema, and what each may do.
//!
//! - `crm_<schema>_owner` (created `NOLOGIN`): owns the schema and every object in it, and is
//!   the role migrations run as. Nobody logs in as it by default: `crm migrate` connects as an
//!   admin (a superuser, or the `CREATEROLE` role that created it and so is a member) and
//!   `SET ROLE`s to it; an operator who would rather connect as the owner itself gives it
//!   `LOGIN` and a password and points `database.migrate_url` at it. It also holds `CREATE` on
//!   the database, because migrations may create trusted extensions (`pg_trgm`).
//! - `crm_<schema>` (`LOGIN`, no password here): the role that serves. `USAGE` on its schema,
//!   `SELECT, INSERT, UPDATE, DELETE` on its tables, `USAGE, SELECT` on its sequences, only
//!   `SELECT` on `_sqlx_migrations` (readiness reads it); no `CREATE` on its schema, nothing
//!   in any other service's schema. Default privileges are set `FOR ROLE` the owner, so a table
//!   a later migration adds is granted as it is created.
//!
//! Two privileges come from `PUBLIC`, not from any grant to the role, so revoking them from the
//! role alone changes nothing: `TEMPORARY` on the database (granted to `PUBLIC` by default) and,
//! before PostgreSQL 15, `CREATE` on schema `public`. Revoking them from `PUBLIC` is
//! database-wide: every role without a grant of its own (other applications, reporting users)
//! loses temporary tables in that database. So it is done only when asked
//! ([`RoleSetup::restrict_public`], `crm migrate --create-roles --restrict-public`), which suits
//! a database the suite owns; otherwise [`ServiceRoles`] reports what the runtime role can still
//! do.
//!
//! Roles are cluster-wide while grants are per database: several databases (or tests) on one
//! server share `crm_customer`, each with its own grants.

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};

/// The role a service connects as to serve: `crm_<schema>`.
pub fn runtime_role(schema: &str) -> String {
    format!("crm_{schema}")
}

/// The role that owns a service's schema and runs its migrations: `crm_<schema>_owner`.
pub fn owner_role(schema: &str) -> String {
    format!("crm_{schema}_owner")
}

/// Choices of `crm migrate --create-roles` that reach beyond the service's schema.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoleSetup {
    /// Revoke `TEMPORARY` on the database and `CREATE` on schema `public` from `PUBLIC`:
    /// database-wide (see the module documentation).
    pub restrict_public: bool,
}

/// The roles of one schema after [`super::Database::migrate_with_roles`], and what the runtime
/// role can still do through `PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoles {
    /// The role that owns the schema and runs its migrations.
    pub owner: String,
    /// The role that serves.
    pub runtime: String,
    /// Whether the runtime role may create temporary tables in this database.
    pub runtime_may_create_temp: bool,
    /// Whether the runtime role may create objects in schema `public`.
    pub runtime_may_create_in_public: bool,
}

/// `name` as a quoted SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates `role` unless it exists. Roles are cluster-wide, so two databases (or tests) may
/// create the same one at once: losing that race is success.
async fn create_role(conn: &mut PgConnection, role: &str, attributes: &str) -> anyhow::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(());
    }
    match sqlx::query(&format!("CREATE ROLE {} {attributes}", ident(role)))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => Ok(()),
        // 42710: it exists by now; 23505: a concurrent CREATE ROLE committed first.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42710" | "23505")) =>
        {
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("creating role {role} (needs CREATEROLE)")),
    }
}

/// Every object in `schema` that `owner` does not own yet, as the statement that hands it over.
/// Extension members stay with their extension, and a sequence that belongs to a column follows
/// its table.
const HAND_OVER: &str = r#"
WITH n AS (SELECT oid, nspname FROM pg_namespace WHERE nspname = $1),
objects AS (
    SELECT 'pg_class'::regclass AS classid, c.oid, c.relowner AS owner,
           CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                          WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                          WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END AS kind,
           format('%I.%I', n.nspname, c.relname) AS target
    FROM pg_class c JOIN n ON c.relnamespace = n.oid
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
    UNION ALL
    SELECT 'pg_proc'::regclass, p.oid, p.proowner, 'ROUTINE',
           format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
    FROM pg_proc p JOIN n ON p.pronamespace = n.oid
    UNION ALL
    SELECT 'pg_type'::regclass, t.oid, t.typowner,
           CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
           format('%I.%I', n.nspname, t.typname)
    FROM pg_type t JOIN n ON t.typnamespace = n.oid
    WHERE t.typtype IN ('e', 'd', 'r')
)
SELECT format('ALTER %s %s OWNER TO %I', o.kind, o.target, $2::text)
FROM objects o
WHERE o.owner <> (SELECT oid FROM pg_roles WHERE rolname = $2)
  AND NOT EXISTS (
      SELECT FROM pg_depend d
      WHERE d.classid = o.classid AND d.objid = o.oid
        AND (d.deptype = 'e' OR (o.kind = 'SEQUENCE' AND d.deptype IN ('a', 'i'))))
ORDER BY o.kind = 'SEQUENCE', o.target
"#;

/// As the admin: creates both roles, gives the schema and everything already in it to the
/// owner, and clears what earlier versions granted (default privileges of the admin instead of
/// the owner, direct grants on the database and on `public`).
pub(super) async fn prepare(
    conn: &mut PgConnection,
    schema: &str,
    setup: RoleSetup,
) -> anyhow::Result<()> {
    let (owner, runtime) = (owner_role(schema), runtime_role(schema));
    create_role(conn, &owner, "NOLOGIN").await?;
    create_role(conn, &runtime, "LOGIN").await?;
    // A CREATEROLE admin that is not a superuser must be a member of the owner to hand it the
    // schema and to SET ROLE to it for the migrations.
    let member: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')")
        .bind(&owner)
        .fetch_one(&mut *conn)
        .await?;
    if !member {
        sqlx::query(&format!("GRANT {} TO CURRENT_USER", ident(&owner)))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("making the migrating role a member of {owner}"))?;
    }
    let (database, public_exists): (String, bool) =
        sqlx::query_as("SELECT current_database()::text, to_regnamespace('public') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    let (database, schema_id) = (ident(&database), ident(schema));
    let (owner_id, runtime_id) = (ident(&owner), ident(&runtime));

    let mut tx = conn.begin().await?;
    let mut statements = vec![
        format!("GRANT CREATE ON DATABASE {database} TO {owner_id}"),
        format!("CREATE SCHEMA IF NOT EXISTS {schema_id} AUTHORIZATION {owner_id}"),
        format!("ALTER SCHEMA {schema_id} OWNER TO {owner_id}"),
    ];
    let hand_over: Vec<String> = sqlx::query_scalar(HAND_OVER)
        .bind(schema)
        .bind(&owner)
        .fetch_all(&mut *tx)
        .await
        .with_context(|| format!("listing the objects of schema {schema}"))?;
    statements.extend(hand_over);
    statements.extend([
        format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {schema_id} REVOKE ALL ON TABLES FROM {runtime_id}"),
        format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema_id} REVOKE ALL ON SEQUENCES FROM {runtime_id}"
        ),
        format!("REVOKE CREATE, TEMPORARY ON DATABASE {database} FROM {runtime_id}"),
    ]);
    if public_exists {
        statements.push(format!("REVOKE ALL ON SCHEMA public FROM {runtime_id}"));
    }
    if setup.restrict_public {
        statements.push(format!(
            "REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC"
        ));
        if public_exists {
            statements.push("REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_string());
        }
    }
    for statement in statements {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("preparing the roles of schema {schema}: {statement}"))?;
    }
    tx.commit().await?;
    Ok(())
}

/// Makes the session act as the owner of `schema`, creating the schema (owned by the session's
/// role) when it does not exist yet, so whatever the migrations create belongs to the owner.
pub(super) async fn become_schema_owner(
    conn: &mut PgConnection,
    schema: &str,
) -> anyhow::Result<()> {
    let found: Option<(String, String, bool)> = sqlx::query_as(
        "SELECT pg_get_userbyid(nspowner)::text, current_user::text, \
                pg_has_role(current_user, nspowner, 'MEMBER') \
         FROM pg_namespace WHERE nspname = $1",
    )
    .bind(schema)
    .fetch_optional(&mut *conn)
    .await
    .with_context(|| format!("finding the owner of schema {schema}"))?;
    match found {
        None => {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
                .execute(&mut *conn)
                .await
                .with_context(|| format!("creating schema {schema}"))?;
        }
        Some((owner, me, _)) if owner == me => {}
        Some((owner, _, true)) => {
            sqlx::query(&format!("SET ROLE {}", ident(&owner)))
                .execute(&mut *conn)
                .await
                .with_context(|| format!("acting as {owner}, the owner of schema {schema}"))?;
        }
        Some((owner, me, false)) => anyhow::bail!(
            "schema {schema} has pending migrations and is owned by {owner}, which {me} may not \
             act as: run `crm migrate` as {owner} or as a role that may SET ROLE to it \
             (database.migrate_url)"
        ),
    }
    Ok(())
}

/// As the owner: exactly the runtime role's privileges on the schema, its tables and
/// sequences, now and for what later migrations create.
pub(super) async fn grant_runtime(conn: &mut PgConnection, schema: &str) -> anyhow::Result<()> {
    let (owner, runtime) = (ident(&owner_role(schema)), ident(&runtime_role(schema)));
    let schema_id = ident(schema);
    // One transaction: a runtime role serving meanwhile never sees its grants revoked.
    let mut tx = conn.begin().await?;
    for statement in [
        format!("REVOKE ALL ON SCHEMA {schema_id} FROM {runtime}"),
        format!("GRANT USAGE ON SCHEMA {schema_id} TO {runtime}"),
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA {schema_id} FROM {runtime}"),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema_id} TO {runtime}"
        ),
        // Readiness reads it; only migrations write it.
        format!("REVOKE INSERT, UPDATE, DELETE ON {schema_id}._sqlx_migrations FROM {runtime}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema_id} FROM {runtime}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema_id} TO {runtime}"),
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema_id} \
             GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {runtime}"
        ),
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema_id} \
             GRANT USAGE, SELECT ON SEQUENCES TO {runtime}"
        ),
    ] {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .with_context(|| {
                format!("granting the runtime role of schema {schema}: {statement}")
            })?;
    }
    tx.commit().await?;
    Ok(())
}

/// The roles of `schema` and what the runtime role can still do through `PUBLIC`.
pub(super) async fn describe(
    conn: &mut PgConnection,
    schema: &str,
) -> anyhow::Result<ServiceRoles> {
    let (owner, runtime) = (owner_role(schema), runtime_role(schema));
    let (temp, public): (bool, bool) = sqlx::query_as(
        "SELECT has_database_privilege($1, current_database(), 'TEMPORARY'), \
                CASE WHEN to_regnamespace('public') IS NULL THEN false \
                     ELSE has_schema_privilege($1, 'public', 'CREATE') END",
    )
    .bind(&runtime)
    .fetch_one(&mut *conn)
    .await?;
    Ok(ServiceRoles {
        owner,
        runtime,
        runtime_may_create_temp: temp,
        runtime_may_create_in_public: public,
    })
}
