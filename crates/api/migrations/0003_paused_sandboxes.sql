-- Paused sandboxes. The snapshot itself (checkpoint image and this record) is in object storage
-- under snapshots/<sandbox_id>/<snapshot_id>/; this row is what makes it a paused sandbox.
CREATE TABLE paused_sandboxes (
    sandbox_id  TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    snapshot_id TEXT NOT NULL,
    -- orchestrator::PausedSandbox as JSON.
    record      TEXT NOT NULL,
    paused_at   TEXT NOT NULL
);
CREATE INDEX paused_sandboxes_team ON paused_sandboxes (team_id, paused_at);
