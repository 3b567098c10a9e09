-- Templates that teams build, and their builds. A template's files (root filesystem, snapshot,
-- template.json) live in the template store; these rows own the names and the build history.
CREATE TABLE templates (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    -- The alias (E2B's name without a tag); unique on this node.
    name       TEXT NOT NULL UNIQUE,
    cpu_count  INTEGER NOT NULL,
    memory_mb  INTEGER NOT NULL,
    public     INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE builds (
    id          TEXT PRIMARY KEY,
    template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    status      TEXT NOT NULL CHECK (status IN ('waiting', 'building', 'ready', 'error')),
    -- The build request (JSON) once started; a v1 build's Dockerfile until then.
    request     TEXT,
    dockerfile  TEXT,
    -- Tags to assign when the build succeeds (JSON array).
    tags        TEXT NOT NULL DEFAULT '[]',
    -- Why it failed (JSON {message, step}).
    reason      TEXT,
    cpu_count   INTEGER NOT NULL,
    memory_mb   INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX builds_template ON builds (template_id, created_at);

CREATE TABLE template_tags (
    template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    build_id    TEXT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (template_id, tag)
);
