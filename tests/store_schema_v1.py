"""The result store's DDL at schema 1 (before the study registry), copied verbatim from that
version: the tests build schema-1 stores with it to check their migration. Frozen: never edit."""

_V1_STATUS_CHECK = "CHECK (status IN ('pending', 'running', 'done', 'failed'))"
V1_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS study (
        key TEXT PRIMARY KEY,
        value TEXT
    )""",
    f"""CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY CHECK (run_id <> ''),
        setup TEXT,
        noise REAL,
        seed INTEGER,
        status TEXT NOT NULL DEFAULT 'pending' {_V1_STATUS_CHECK},
        started TEXT,
        finished TEXT,
        wall_seconds REAL,
        error TEXT
    )""",
    f"""CREATE TABLE IF NOT EXISTS units (
        unit_id TEXT PRIMARY KEY CHECK (unit_id <> ''),
        kind TEXT NOT NULL,
        status TEXT NOT NULL {_V1_STATUS_CHECK},
        payload TEXT NOT NULL DEFAULT '{{}}',
        error TEXT,
        finished TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL CHECK (epoch >= 0),
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        created TEXT NOT NULL,
        PRIMARY KEY (run_id, epoch)
    )""",
    """CREATE TABLE IF NOT EXISTS metrics (
        metric_id INTEGER PRIMARY KEY,
        run_id TEXT REFERENCES runs(run_id) ON DELETE CASCADE,
        epoch INTEGER CHECK (epoch IS NULL OR epoch >= 0),
        split TEXT NOT NULL DEFAULT '',
        name TEXT NOT NULL CHECK (name <> ''),
        value REAL NOT NULL,
        unit_id TEXT REFERENCES units(unit_id) ON DELETE CASCADE,
        recorded TEXT NOT NULL
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS metrics_key
        ON metrics (IFNULL(run_id, ''), IFNULL(epoch, -1), split, name)""",
    "CREATE INDEX IF NOT EXISTS metrics_name ON metrics (name, split)",
    "CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id)",
    "CREATE INDEX IF NOT EXISTS metrics_unit ON metrics (unit_id)",
    """CREATE TABLE IF NOT EXISTS pairwise (
        pair_id INTEGER PRIMARY KEY,
        analysis TEXT NOT NULL CHECK (analysis <> ''),
        population TEXT,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        value REAL NOT NULL,
        unit_id TEXT REFERENCES units(unit_id) ON DELETE CASCADE,
        recorded TEXT NOT NULL,
        UNIQUE (analysis, model_a, model_b)
    )""",
    "CREATE INDEX IF NOT EXISTS pairwise_unit ON pairwise (unit_id)",
    "CREATE INDEX IF NOT EXISTS units_kind ON units (kind, status)",
]
