//! The PostgreSQL run store, for runs spread over many CI runners: one
//! database holds every run's events and every run lock.
//!
//! The run lock is a session-level advisory lock (`pg_try_advisory_lock`) on
//! a connection held for the whole run: the server releases it the moment
//! that connection ends, however the holder ends — a `kill -9` closes the
//! socket — so there is no lease length to tune, no clock to trust and no
//! stale lock to take over. A row in `gantry_locks` describes the holder for
//! the one refused and carries a heartbeat; the advisory lock alone decides.
//! (Session locks need a direct connection: a pooler in transaction mode
//! would hand the session to someone else.)
//!
//! The schema is created or migrated on first use, under a transaction-level
//! advisory lock so two runners starting at once do not race.

use super::{Holder, LockKey, RunInfo, RunLock, RunStore, StoreError, StoredJournal};
use crate::run::journal::Record;
use crate::run::{Event, Status};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::{Client, NoTls};

/// Migrations, in order; the schema version is how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
    create table gantry_runs (
        id text primary key,
        pipeline text not null default '?',
        environment text not null default '?',
        entity text not null default '?',
        status text not null default 'incomplete',
        events bigint not null default 0,
        created_at timestamptz not null default now()
    );
    create table gantry_events (
        run_id text not null references gantry_runs (id),
        seq bigint not null,
        body text not null,
        primary key (run_id, seq)
    );
    create table gantry_locks (
        lock_key text primary key,
        holder text not null,
        heartbeat_at timestamptz not null default now()
    );
"#,
    r#"
    alter table gantry_runs add column rollout text;
"#,
];

/// Advisory lock id under which the schema is migrated (the text "gantry:schema" hashed once).
const MIGRATION_LOCK: i64 = 0x6761_6e74_7279_0001;

/// Runs and locks in a PostgreSQL database.
pub struct PostgresStore {
    url: String,
    location: String,
    client: tokio::sync::Mutex<Client>,
    artifacts: PathBuf,
}

async fn connect(url: &str, location: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(|e| db(location, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("run store connection ended: {e}");
        }
    });
    Ok(client)
}

fn db(location: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Database { location: location.to_string(), message: e.to_string() }
}

/// The URL without its password, for messages.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "postgres://(unparsable URL)".into(),
    }
}

/// The advisory lock id of a run lock key: 64 bits of its sha256.
fn lock_id(key: &LockKey) -> i64 {
    let hash = Sha256::digest(format!("gantry-run-lock\0{}\0{}\0{}", key.pipeline, key.environment, key.entity));
    i64::from_be_bytes(hash[..8].try_into().expect("a sha256 has 8 bytes"))
}

impl PostgresStore {
    /// Connects and creates or migrates the schema; `artifacts` is the local directory for run artifacts.
    pub async fn connect(url: &str, artifacts: PathBuf) -> Result<Self, StoreError> {
        let location = without_password(url);
        let mut client = connect(url, &location).await?;
        migrate(&mut client, &location).await?;
        Ok(Self { url: url.to_string(), location, client: tokio::sync::Mutex::new(client), artifacts })
    }
}

async fn migrate(client: &mut Client, location: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(|e| db(location, e))?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| db(location, e))?;
    tx.batch_execute("create table if not exists gantry_schema (version integer not null)")
        .await
        .map_err(|e| db(location, e))?;
    let row = tx.query_opt("select version from gantry_schema", &[]).await.map_err(|e| db(location, e))?;
    let version = row.map(|r| r.get::<_, i32>(0)).unwrap_or(0);
    if version as usize > MIGRATIONS.len() {
        return Err(db(
            location,
            format!("schema version {version} is newer than this gantry knows ({}): upgrade gantry", MIGRATIONS.len()),
        ));
    }
    for migration in &MIGRATIONS[version as usize..] {
        tx.batch_execute(migration).await.map_err(|e| db(location, e))?;
    }
    let latest = MIGRATIONS.len() as i32;
    if version == 0 {
        tx.execute("insert into gantry_schema (version) values ($1)", &[&latest]).await
    } else {
        tx.execute("update gantry_schema set version = $1", &[&latest]).await
    }
    .map_err(|e| db(location, e))?;
    tx.commit().await.map_err(|e| db(location, e))
}

#[async_trait]
impl RunStore for PostgresStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn create(&self, run_id: &str) -> Result<(), StoreError> {
        let client = self.client.lock().await;
        client
            .execute("insert into gantry_runs (id) values ($1)", &[&run_id])
            .await
            .map_err(|e| db(&self.location, e))?;
        Ok(())
    }

    async fn append(&self, run_id: &str, records: &[Record]) -> Result<(), StoreError> {
        let mut client = self.client.lock().await;
        let err = |e| db(&self.location, e);
        let tx = client.transaction().await.map_err(err)?;
        for record in records {
            let body = serde_json::to_string(record).map_err(|e| db(&self.location, e))?;
            tx.execute(
                "insert into gantry_events (run_id, seq, body) values ($1, $2, $3)",
                &[&run_id, &(record.seq as i64), &body],
            )
            .await
            .map_err(err)?;
            match &record.event {
                Event::RunStarted { pipeline, environment, entity, rollout, .. }
                | Event::ReadingSecrets { pipeline, environment, entity, rollout, .. } => tx
                    .execute(
                        "update gantry_runs set pipeline = $2, environment = $3, entity = $4, rollout = $5 where id = $1",
                        &[&run_id, pipeline, environment, entity, rollout],
                    )
                    .await
                    .map_err(err)?,
                Event::RunFinished { status } => tx
                    .execute("update gantry_runs set status = $2 where id = $1", &[&run_id, status])
                    .await
                    .map_err(err)?,
                Event::Settled { .. } => tx
                    .execute("update gantry_runs set status = $2 where id = $1", &[&run_id, &Status::Settled.name()])
                    .await
                    .map_err(err)?,
                Event::Abandoned { .. } => tx
                    .execute("update gantry_runs set status = $2 where id = $1", &[&run_id, &super::NEEDS_A_PERSON])
                    .await
                    .map_err(err)?,
                _ => 0,
            };
        }
        tx.execute("update gantry_runs set events = events + $2 where id = $1", &[&run_id, &(records.len() as i64)])
            .await
            .map_err(err)?;
        // The commit returns once the server has the events on stable storage.
        tx.commit().await.map_err(err)
    }

    async fn read(&self, run_id: &str) -> Result<StoredJournal, StoreError> {
        let client = self.client.lock().await;
        let err = |e| db(&self.location, e);
        if client.query_opt("select 1 from gantry_runs where id = $1", &[&run_id]).await.map_err(err)?.is_none() {
            return Err(StoreError::NotFound { id: run_id.to_string(), location: self.location.clone() });
        }
        let rows = client
            .query("select seq, body from gantry_events where run_id = $1 order by seq", &[&run_id])
            .await
            .map_err(err)?;
        let mut journal = StoredJournal::default();
        for row in rows {
            let (seq, body): (i64, String) = (row.get(0), row.get(1));
            let record = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                id: run_id.to_string(),
                entry: seq as u64,
                message: e.to_string(),
            })?;
            journal.records.push(record);
        }
        Ok(journal)
    }

    async fn list(&self) -> Result<Vec<RunInfo>, StoreError> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                "select id, pipeline, environment, entity, status, events, rollout from gantry_runs order by id",
                &[],
            )
            .await
            .map_err(|e| db(&self.location, e))?;
        Ok(rows
            .iter()
            .map(|r| RunInfo {
                id: r.get(0),
                pipeline: r.get(1),
                environment: r.get(2),
                entity: r.get(3),
                status: r.get(4),
                events: r.get::<_, i64>(5) as usize,
                rollout: r.get(6),
            })
            .collect())
    }

    async fn lock(&self, key: &LockKey, holder: &Holder) -> Result<Arc<dyn RunLock>, StoreError> {
        // A connection of its own: the lock lives exactly as long as it does.
        let client = connect(&self.url, &self.location).await?;
        let err = |e| db(&self.location, e);
        let id = lock_id(key);
        let taken: bool = client.query_one("select pg_try_advisory_lock($1)", &[&id]).await.map_err(err)?.get(0);
        let name = key.to_string();
        if !taken {
            let row = client.query_opt("select holder from gantry_locks where lock_key = $1", &[&name]).await;
            let holder =
                row.ok().flatten().and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok()).map(Box::new);
            return Err(StoreError::Held {
                key: Box::new(key.clone()),
                holder,
                location: format!("advisory lock {id} in {}", self.location),
            });
        }
        let text = serde_json::to_string(holder).map_err(|e| db(&self.location, e))?;
        client
            .execute(
                "insert into gantry_locks (lock_key, holder, heartbeat_at) values ($1, $2, now())
                 on conflict (lock_key) do update set holder = excluded.holder, heartbeat_at = now()",
                &[&name, &text],
            )
            .await
            .map_err(err)?;
        Ok(Arc::new(PgLock { client, id, name, location: self.location.clone() }))
    }

    fn artifacts(&self, run_id: &str) -> PathBuf {
        self.artifacts.join(run_id)
    }
}

/// An advisory lock held on its own connection.
struct PgLock {
    client: Client,
    id: i64,
    name: String,
    location: String,
}

#[async_trait]
impl RunLock for PgLock {
    async fn heartbeat(&self) -> Result<(), StoreError> {
        self.client
            .execute("update gantry_locks set heartbeat_at = now() where lock_key = $1", &[&self.name])
            .await
            .map(|_| ())
            .map_err(|e| db(&self.location, e))
    }

    async fn release(&self) -> Result<(), StoreError> {
        let err = |e| db(&self.location, e);
        self.client.execute("delete from gantry_locks where lock_key = $1", &[&self.name]).await.map_err(err)?;
        self.client.execute("select pg_advisory_unlock($1)", &[&self.id]).await.map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ids_differ_per_key_and_urls_lose_their_password() {
        let key = |e: &str| LockKey { pipeline: "p".into(), environment: "production".into(), entity: e.into() };
        assert_ne!(lock_id(&key("a")), lock_id(&key("b")));
        assert_eq!(lock_id(&key("a")), lock_id(&key("a")));
        assert_eq!(
            without_password("postgres://gantry:s3cret@127.0.0.1:5432/runs"),
            "postgres://gantry@127.0.0.1:5432/runs"
        );
    }
}
