-- Projects, their datasets and shards. Timestamps are Unix seconds.

CREATE TABLE projects (
    id               INTEGER PRIMARY KEY,
    user_id          INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name             TEXT    NOT NULL,
    -- draft, running, paused, cancelled or finished (see api::projects::ProjectState).
    state            TEXT    NOT NULL,
    -- The validated model in DAIG JSON (a Keras import is stored converted).
    model_json       TEXT    NOT NULL,
    -- The training settings as JSON (api::projects::TrainingSettings).
    settings_json    TEXT    NOT NULL,
    -- The key sites embed to let their visitors contribute, for `site_key` access; NULL for public projects.
    site_key         TEXT    UNIQUE,
    param_count      INTEGER NOT NULL,
    flops_per_sample INTEGER NOT NULL,
    epoch            INTEGER NOT NULL DEFAULT 0,
    -- The parameter version, raised by every applied update.
    version          INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX projects_user ON projects(user_id);

-- A project's committed dataset: present only once every shard is stored.
CREATE TABLE datasets (
    project_id         INTEGER PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    format             TEXT    NOT NULL,
    feature_dtype      TEXT    NOT NULL,
    -- JSON array: the shape of one sample.
    sample_shape       TEXT    NOT NULL,
    train_samples      INTEGER NOT NULL,
    validation_samples INTEGER NOT NULL,
    created_at         INTEGER NOT NULL
);

CREATE TABLE shards (
    id           INTEGER PRIMARY KEY,
    project_id   INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    -- train or validation.
    role         TEXT    NOT NULL,
    number       INTEGER NOT NULL,
    -- The object-store key, under projects/<id>/shards/.
    object_key   TEXT    NOT NULL,
    -- Lowercase hex SHA-256 of the shard's bytes, which providers check.
    sha256       TEXT    NOT NULL,
    sample_count INTEGER NOT NULL,
    size_bytes   INTEGER NOT NULL,
    UNIQUE (project_id, role, number)
);
