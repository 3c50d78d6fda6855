-- Training: providers, checkpoints, applied contributions and batches, validation metrics. Timestamps are Unix
-- seconds. Rows describing updates after a project's last checkpoint are deleted when it resumes from that
-- checkpoint (see server/src/training), so that these tables always agree with the stored parameters.

-- The version whose checkpoint a running or paused project resumes from; NULL before its first checkpoint.
ALTER TABLE projects ADD COLUMN checkpoint_version INTEGER;

-- One row per provider connection; its id is the ProviderId of the wire protocol.
CREATE TABLE providers (
    id              INTEGER PRIMARY KEY,
    backend         TEXT    NOT NULL,
    adapter         TEXT    NOT NULL,
    -- The site key it came through, if any.
    site_key        TEXT,
    connected_at    INTEGER NOT NULL,
    disconnected_at INTEGER
);

CREATE TABLE checkpoints (
    project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    -- The parameter version the checkpoint holds.
    version    INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    -- Object-store keys: the parameters (safetensors) and the trainer state (optimiser, epoch cursor).
    params_key TEXT    NOT NULL,
    state_key  TEXT    NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, version)
);

-- Every applied contribution: the credit ledger.
CREATE TABLE contributions (
    id           INTEGER PRIMARY KEY,
    project_id   INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    provider_id  INTEGER NOT NULL,
    site_key     TEXT,
    lease_id     INTEGER NOT NULL,
    -- The version the contribution was computed on, and the version its update produced.
    base_version INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    samples      INTEGER NOT NULL,
    mean_loss    REAL    NOT NULL,
    applied_at   INTEGER NOT NULL
);
CREATE INDEX contributions_project ON contributions(project_id, version);
CREATE INDEX contributions_provider ON contributions(provider_id);

-- Every batch applied, at most once per epoch: the primary key is the exactly-once guarantee.
CREATE TABLE applied_batches (
    project_id      INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    epoch           INTEGER NOT NULL,
    -- The train shard's number and the batch's number in that shard's order for the epoch.
    shard           INTEGER NOT NULL,
    batch           INTEGER NOT NULL,
    contribution_id INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    PRIMARY KEY (project_id, epoch, shard, batch)
);

-- Validation results (and the training loss of the updates since the previous row).
CREATE TABLE metrics (
    project_id   INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    epoch        INTEGER NOT NULL,
    -- Training samples applied up to this version.
    samples      INTEGER NOT NULL,
    train_loss   REAL,
    val_loss     REAL,
    val_accuracy REAL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (project_id, version)
);
