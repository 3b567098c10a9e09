//! Paused sandboxes: which exist, whose they are, and which snapshot holds each.

use super::{Store, StoreError};
use orchestrator::PausedSandbox;
use sqlx::Row;

/// A paused sandbox and the snapshot it was paused to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PausedRecord {
    pub sandbox: PausedSandbox,
    pub snapshot_id: String,
}

impl Store {
    /// Records `sandbox` as paused to `snapshot_id` (replacing an older pause of it).
    pub async fn insert_paused(
        &self,
        sandbox: &PausedSandbox,
        snapshot_id: &str,
    ) -> Result<(), StoreError> {
        let record = serde_json::to_string(sandbox).map_err(StoreError::Encode)?;
        sqlx::query(
            "INSERT OR REPLACE INTO paused_sandboxes (sandbox_id, team_id, snapshot_id, record, paused_at) \
             VALUES (?, ?, ?, ?, datetime('now'))",
        )
        .bind(&sandbox.id)
        .bind(&sandbox.team_id)
        .bind(snapshot_id)
        .bind(record)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The paused sandbox `id`, if there is one.
    pub async fn paused(&self, id: &str) -> Result<Option<PausedRecord>, StoreError> {
        let row =
            sqlx::query("SELECT record, snapshot_id FROM paused_sandboxes WHERE sandbox_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| decode(&row)).transpose()
    }

    /// A team's paused sandboxes, oldest pause first.
    pub async fn list_paused(&self, team_id: &str) -> Result<Vec<PausedRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT record, snapshot_id FROM paused_sandboxes WHERE team_id = ? ORDER BY paused_at, sandbox_id",
        )
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// How many paused sandboxes were taken on template `template_id`.
    pub async fn paused_of_template(&self, template_id: &str) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM paused_sandboxes WHERE json_extract(record, '$.templateId') = ?",
        )
        .bind(template_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Forgets paused sandbox `id`; false if it was not paused.
    pub async fn delete_paused(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM paused_sandboxes WHERE sandbox_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

fn decode(row: &sqlx::sqlite::SqliteRow) -> Result<PausedRecord, StoreError> {
    let record: String = row.try_get("record")?;
    Ok(PausedRecord {
        sandbox: serde_json::from_str(&record).map_err(StoreError::Encode)?,
        snapshot_id: row.try_get("snapshot_id")?,
    })
}
