-- Accounts and access: users, API tokens, dashboard sessions. Timestamps are Unix seconds.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    -- ASCII letters, digits, '_' and '-', so NOCASE makes uniqueness case-insensitive.
    username      TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    -- Stored lowercased (Unicode-aware, in Rust), so plain uniqueness is case-insensitive.
    email         TEXT    NOT NULL UNIQUE,
    -- PHC string of an argon2id hash.
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    -- SHA-256 of the whole token string; the token itself is never stored.
    token_hash   BLOB    NOT NULL UNIQUE,
    -- The first characters of the token, to tell tokens apart in a list.
    prefix       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens(user_id);

CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- SHA-256 of the session cookie's value.
    token_hash BLOB    NOT NULL UNIQUE,
    -- SHA-256 of the CSRF token issued with the session (the daig_csrf cookie).
    csrf_hash  BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE INDEX sessions_expiry ON sessions(expires_at);
