//! Metadata in SQLite: teams and their API keys and access tokens (hashed); templates and
//! their builds ([`templates`]); paused sandboxes ([`paused`]).

mod paused;
mod templates;

pub use paused::PausedRecord;
pub use templates::{BuildRecord, BuildStatus, TemplateRecord};

use sha2::{Digest, Sha256};
use sqlx::{
    Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode},
};
use std::{path::Path, str::FromStr};

/// A team: who owns sandboxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub max_sandboxes: u32,
}

/// Credentials made for a new team; the only time the secrets exist in clear.
#[derive(Debug)]
pub struct NewCredentials {
    pub api_key: String,
    pub access_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database record: {0}")]
    Encode(serde_json::Error),
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

const DEFAULT_TEAM: &str = "default";

impl Store {
    /// Opens (creating) the database and applies migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true);
        let pool = SqlitePool::connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Creates the default team with an API key and access token if there is no team yet.
    /// Returns the new secrets, or `None` when the team already existed.
    pub async fn ensure_default_team(
        &self,
        max_sandboxes: u32,
    ) -> Result<Option<NewCredentials>, StoreError> {
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM teams WHERE id = ?")
            .bind(DEFAULT_TEAM)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_some() {
            sqlx::query("UPDATE teams SET max_sandboxes = ? WHERE id = ?")
                .bind(i64::from(max_sandboxes))
                .bind(DEFAULT_TEAM)
                .execute(&self.pool)
                .await?;
            return Ok(None);
        }
        let credentials = NewCredentials {
            api_key: format!("e2b_{}", orchestrator::random_hex(40)),
            access_token: format!("sk_e2b_{}", orchestrator::random_hex(40)),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO teams (id, name, max_sandboxes, created_at) VALUES (?, ?, ?, datetime('now'))")
            .bind(DEFAULT_TEAM)
            .bind("Default team")
            .bind(i64::from(max_sandboxes))
            .execute(&mut *tx)
            .await?;
        for (kind, secret) in [
            ("api_key", &credentials.api_key),
            ("access_token", &credentials.access_token),
        ] {
            sqlx::query("INSERT INTO credentials (id, team_id, kind, digest, prefix, created_at) VALUES (?, ?, ?, ?, ?, datetime('now'))")
                .bind(orchestrator::random_id(12))
                .bind(DEFAULT_TEAM)
                .bind(kind)
                .bind(digest(secret))
                .bind(secret.chars().take(10).collect::<String>())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(credentials))
    }

    /// The team an API key (`kind = api_key`) or access token (`access_token`) belongs to.
    pub async fn team_for(&self, kind: &str, secret: &str) -> Result<Option<Team>, StoreError> {
        let row = sqlx::query(
            "SELECT t.id, t.name, t.max_sandboxes FROM credentials c JOIN teams t ON t.id = c.team_id
             WHERE c.kind = ? AND c.digest = ?",
        )
        .bind(kind)
        .bind(digest(secret))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| team_of(&row)))
    }

    /// Team `id`.
    pub async fn team(&self, id: &str) -> Result<Option<Team>, StoreError> {
        let row = sqlx::query("SELECT id, name, max_sandboxes FROM teams WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| team_of(&row)))
    }
}

fn team_of(row: &sqlx::sqlite::SqliteRow) -> Team {
    Team {
        id: row.get(0),
        name: row.get(1),
        max_sandboxes: u32::try_from(row.get::<i64, _>(2)).unwrap_or(0),
    }
}

fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Store;

    #[tokio::test]
    async fn default_team_and_hashed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db")).await.unwrap();
        let credentials = store
            .ensure_default_team(5)
            .await
            .unwrap()
            .expect("first start creates keys");
        assert!(credentials.api_key.starts_with("e2b_") && credentials.api_key.len() == 44);
        assert!(
            store.ensure_default_team(5).await.unwrap().is_none(),
            "second start keeps them"
        );
        let team = store
            .team_for("api_key", &credentials.api_key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(team.max_sandboxes, 5);
        assert!(
            store
                .team_for("api_key", &credentials.access_token)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .team_for("access_token", &credentials.access_token)
                .await
                .unwrap()
                .is_some()
        );
        let db = std::fs::read(dir.path().join("kiln.db")).unwrap();
        let needle = credentials.api_key.as_bytes();
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "the key is not stored in clear"
        );
    }
}
