-- Teams and their credentials. Keys and tokens are stored as SHA-256 hex digests only.
CREATE TABLE teams (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    max_sandboxes INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE credentials (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('api_key', 'access_token')),
    digest     TEXT NOT NULL UNIQUE,
    -- The first characters, so people can tell keys apart without the secret.
    prefix     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
