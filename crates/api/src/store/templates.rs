//! Templates (names, owners) and their builds (status, request, failure reason, tags).
//!
//! Invariant: a build leaves `waiting`/`building` only for `ready` or `error`; one that was
//! running when Kiln stopped is failed with a reason on the next start
//! ([`Store::fail_interrupted_builds`]), so nothing stays "building" forever.

use super::{Store, StoreError};
use sqlx::{Row, sqlite::SqliteRow};
use time::OffsetDateTime;

/// A template row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateRecord {
    pub id: String,
    pub team_id: String,
    pub name: String,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub public: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A build's state, as E2B's `TemplateBuildStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildStatus {
    Waiting,
    Building,
    Ready,
    Error,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Waiting => "waiting",
            BuildStatus::Building => "building",
            BuildStatus::Ready => "ready",
            BuildStatus::Error => "error",
        }
    }

    fn parse(text: &str) -> BuildStatus {
        match text {
            "building" => BuildStatus::Building,
            "ready" => BuildStatus::Ready,
            "error" => BuildStatus::Error,
            _ => BuildStatus::Waiting,
        }
    }
}

/// A build row.
#[derive(Clone, Debug)]
pub struct BuildRecord {
    pub id: String,
    pub template_id: String,
    pub status: BuildStatus,
    pub request: Option<String>,
    pub dockerfile: Option<String>,
    pub tags: Vec<String>,
    /// `(message, step)` of a failed build.
    pub reason: Option<(String, Option<String>)>,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

fn now() -> String {
    format_time(OffsetDateTime::now_utc())
}

fn format_time(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn parse_time(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `SELECT <every template column> FROM templates <rest>`, as a literal (sqlx wants static SQL).
macro_rules! select_templates {
    ($rest:literal) => {
        concat!(
            "SELECT id, team_id, name, cpu_count, memory_mb, public, created_at, updated_at FROM templates ",
            $rest
        )
    };
}

/// `SELECT <every build column> FROM builds <rest>`.
macro_rules! select_builds {
    ($rest:literal) => {
        concat!(
            "SELECT id, template_id, status, request, dockerfile, tags, reason, cpu_count, memory_mb, created_at, updated_at, finished_at FROM builds ",
            $rest
        )
    };
}

fn template_row(row: &SqliteRow) -> TemplateRecord {
    TemplateRecord {
        id: row.get(0),
        team_id: row.get(1),
        name: row.get(2),
        cpu_count: u32::try_from(row.get::<i64, _>(3)).unwrap_or(1),
        memory_mb: u64::try_from(row.get::<i64, _>(4)).unwrap_or(512),
        public: row.get::<i64, _>(5) != 0,
        created_at: parse_time(&row.get::<String, _>(6)),
        updated_at: parse_time(&row.get::<String, _>(7)),
    }
}

fn build_row(row: &SqliteRow) -> BuildRecord {
    let reason = row
        .get::<Option<String>, _>(6)
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .map(|value| {
            (
                value["message"].as_str().unwrap_or("").to_owned(),
                value["step"].as_str().map(str::to_owned),
            )
        });
    BuildRecord {
        id: row.get(0),
        template_id: row.get(1),
        status: BuildStatus::parse(&row.get::<String, _>(2)),
        request: row.get(3),
        dockerfile: row.get(4),
        tags: serde_json::from_str(&row.get::<String, _>(5)).unwrap_or_default(),
        reason,
        cpu_count: u32::try_from(row.get::<i64, _>(7)).unwrap_or(1),
        memory_mb: u64::try_from(row.get::<i64, _>(8)).unwrap_or(512),
        created_at: parse_time(&row.get::<String, _>(9)),
        updated_at: parse_time(&row.get::<String, _>(10)),
        finished_at: row.get::<Option<String>, _>(11).map(|t| parse_time(&t)),
    }
}

impl Store {
    /// The template named `name`, if any.
    pub async fn template_by_name(&self, name: &str) -> Result<Option<TemplateRecord>, StoreError> {
        let row = sqlx::query(select_templates!("WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(template_row))
    }

    /// The template with id or name `id_or_name`, if any.
    pub async fn template(&self, id_or_name: &str) -> Result<Option<TemplateRecord>, StoreError> {
        let row = sqlx::query(select_templates!("WHERE id = ? OR name = ?"))
            .bind(id_or_name)
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(template_row))
    }

    /// The team's templates, oldest first.
    pub async fn team_templates(&self, team_id: &str) -> Result<Vec<TemplateRecord>, StoreError> {
        let rows = sqlx::query(select_templates!(
            "WHERE team_id = ? ORDER BY created_at, id"
        ))
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(template_row).collect())
    }

    /// Creates template `id` named `name`, or updates the resources of the team's existing one.
    pub async fn upsert_template(
        &self,
        id: &str,
        team_id: &str,
        name: &str,
        cpu_count: u32,
        memory_mb: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO templates (id, team_id, name, cpu_count, memory_mb, public, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, 0, ?, ?)
             ON CONFLICT (id) DO UPDATE SET cpu_count = excluded.cpu_count, memory_mb = excluded.memory_mb, updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(team_id)
        .bind(name)
        .bind(i64::from(cpu_count))
        .bind(i64::try_from(memory_mb).unwrap_or(i64::MAX))
        .bind(now())
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_template(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM templates WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a new build (waiting) of a template.
    pub async fn create_build(
        &self,
        id: &str,
        template_id: &str,
        cpu_count: u32,
        memory_mb: u64,
        tags: &[String],
        dockerfile: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO builds (id, template_id, status, dockerfile, tags, cpu_count, memory_mb, created_at, updated_at)
             VALUES (?, ?, 'waiting', ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(template_id)
        .bind(dockerfile)
        .bind(serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()))
        .bind(i64::from(cpu_count))
        .bind(i64::try_from(memory_mb).unwrap_or(i64::MAX))
        .bind(now())
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn build(
        &self,
        template_id: &str,
        build_id: &str,
    ) -> Result<Option<BuildRecord>, StoreError> {
        let row = sqlx::query(select_builds!("WHERE template_id = ? AND id = ?"))
            .bind(template_id)
            .bind(build_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(build_row))
    }

    /// A template's builds, newest first.
    pub async fn builds(&self, template_id: &str) -> Result<Vec<BuildRecord>, StoreError> {
        let rows = sqlx::query(select_builds!(
            "WHERE template_id = ? ORDER BY created_at DESC, id"
        ))
        .bind(template_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(build_row).collect())
    }

    /// Starts a waiting build with `request` (JSON). False if it is not waiting.
    pub async fn start_build(&self, build_id: &str, request: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE builds SET status = 'building', request = ?, updated_at = ? WHERE id = ? AND status = 'waiting'",
        )
        .bind(request)
        .bind(now())
        .bind(build_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends a build: `ready`, or `error` with a reason.
    pub async fn finish_build(
        &self,
        build_id: &str,
        failure: Option<(&str, Option<&str>)>,
    ) -> Result<(), StoreError> {
        let (status, reason) = match failure {
            None => ("ready", None),
            Some((message, step)) => (
                "error",
                Some(serde_json::json!({"message": message, "step": step}).to_string()),
            ),
        };
        sqlx::query(
            "UPDATE builds SET status = ?, reason = ?, updated_at = ?, finished_at = ? WHERE id = ?",
        )
        .bind(status)
        .bind(reason)
        .bind(now())
        .bind(now())
        .bind(build_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Fails every build that was running when Kiln stopped; returns how many.
    pub async fn fail_interrupted_builds(&self) -> Result<u64, StoreError> {
        let reason =
            serde_json::json!({"message": "Kiln restarted while the build was running; start the build again"})
                .to_string();
        let done = sqlx::query(
            "UPDATE builds SET status = 'error', reason = ?, updated_at = ?, finished_at = ? WHERE status = 'building'",
        )
        .bind(reason)
        .bind(now())
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Points `tags` of a template at `build_id`.
    pub async fn assign_tags(
        &self,
        template_id: &str,
        build_id: &str,
        tags: &[String],
    ) -> Result<(), StoreError> {
        for tag in tags {
            sqlx::query(
                "INSERT INTO template_tags (template_id, tag, build_id, created_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (template_id, tag) DO UPDATE SET build_id = excluded.build_id, created_at = excluded.created_at",
            )
            .bind(template_id)
            .bind(tag)
            .bind(build_id)
            .bind(now())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    pub async fn remove_tags(&self, template_id: &str, tags: &[String]) -> Result<(), StoreError> {
        for tag in tags {
            sqlx::query("DELETE FROM template_tags WHERE template_id = ? AND tag = ?")
                .bind(template_id)
                .bind(tag)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// `(tag, build id, created at)` of a template, by tag.
    pub async fn tags(
        &self,
        template_id: &str,
    ) -> Result<Vec<(String, String, OffsetDateTime)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tag, build_id, created_at FROM template_tags WHERE template_id = ? ORDER BY tag",
        )
        .bind(template_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), parse_time(&row.get::<String, _>(2))))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{BuildStatus, Store};

    #[tokio::test]
    async fn builds_move_through_their_states() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kiln.db")).await.unwrap();
        store.ensure_default_team(5).await.unwrap();
        store
            .upsert_template("t1", "default", "app", 2, 512)
            .await
            .unwrap();
        assert_eq!(store.template("app").await.unwrap().unwrap().id, "t1");
        store
            .create_build("b1", "t1", 2, 512, &["v1".into()], None)
            .await
            .unwrap();
        store
            .create_build("b2", "t1", 2, 512, &[], None)
            .await
            .unwrap();
        assert!(store.start_build("b1", "{}").await.unwrap());
        assert!(
            !store.start_build("b1", "{}").await.unwrap(),
            "only a waiting build starts"
        );
        assert!(store.start_build("b2", "{}").await.unwrap());
        store
            .finish_build("b2", Some(("RUN failed", Some("3"))))
            .await
            .unwrap();
        assert_eq!(
            store.fail_interrupted_builds().await.unwrap(),
            1,
            "b1 was running"
        );
        let b1 = store.build("t1", "b1").await.unwrap().unwrap();
        assert_eq!(b1.status, BuildStatus::Error);
        assert!(b1.reason.unwrap().0.contains("restarted"));
        let b2 = store.build("t1", "b2").await.unwrap().unwrap();
        assert_eq!(b2.reason, Some(("RUN failed".into(), Some("3".into()))));
        assert_eq!(b1.tags, ["v1"]);
        store
            .assign_tags("t1", "b2", &["stable".into()])
            .await
            .unwrap();
        assert_eq!(store.tags("t1").await.unwrap()[0].0, "stable");
        assert!(store.delete_template("t1").await.unwrap());
        assert!(
            store.build("t1", "b1").await.unwrap().is_none(),
            "builds go with their template"
        );
    }
}
