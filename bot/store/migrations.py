"""The store's schema as numbered migrations, and the splitter that applies them statement by statement."""

from __future__ import annotations

import sqlite3

# Each entry is applied once, in order, inside one transaction; never edit a released entry, append one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        channel TEXT,
        verb TEXT NOT NULL,
        model TEXT,
        env TEXT,
        version TEXT,
        status TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        key TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX actions_model ON actions(model, id);
    CREATE INDEX actions_ts ON actions(ts);
    CREATE TRIGGER actions_no_update BEFORE UPDATE ON actions
        BEGIN SELECT RAISE(ABORT, 'actions is append-only'); END;
    CREATE TRIGGER actions_no_delete BEFORE DELETE ON actions
        BEGIN SELECT RAISE(ABORT, 'actions is append-only'); END;
    -- The chain's head, so deleting the newest rows is caught too; kept by a trigger in the same statement.
    CREATE TABLE audit_head (one INTEGER PRIMARY KEY CHECK (one = 1), last_id INTEGER NOT NULL, hash TEXT NOT NULL);
    CREATE TRIGGER actions_head AFTER INSERT ON actions
        BEGIN INSERT OR REPLACE INTO audit_head (one, last_id, hash) VALUES (1, NEW.id, NEW.hash); END;

    CREATE TABLE slack_requests (key TEXT PRIMARY KEY, ts TEXT NOT NULL);

    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        state TEXT NOT NULL,
        deployed_by TEXT,
        deployed_at TEXT,
        verified_at TEXT,
        verify_report TEXT,
        approved_by TEXT,
        approved_at TEXT,
        reason TEXT,
        channel TEXT,
        card_ts TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX releases_model ON releases(model, id);
    CREATE TABLE environments (
        model TEXT NOT NULL,
        env TEXT NOT NULL,
        version TEXT,
        triton_version INTEGER,
        release_id INTEGER,
        previous_version TEXT,
        previous_triton_version INTEGER,
        deployed_by TEXT,
        approved_by TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (model, env)
    );
    CREATE TABLE locks (
        model TEXT NOT NULL,
        env TEXT NOT NULL,
        holder TEXT NOT NULL,
        reason TEXT NOT NULL,
        kind TEXT NOT NULL,
        operation_id INTEGER,
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (model, env)
    );
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        env TEXT NOT NULL,
        version TEXT,
        release_id INTEGER,
        actor TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        started_at TEXT NOT NULL,
        ended_at TEXT
    );
    CREATE TABLE retrain_runs (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        backend TEXT NOT NULL,
        run_id TEXT NOT NULL,
        state TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        handle TEXT NOT NULL DEFAULT '{}',
        version TEXT,
        channel TEXT,
        card_ts TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT
    );
    CREATE TABLE datagen_reports (
        job TEXT NOT NULL,
        run_date TEXT NOT NULL,
        raw TEXT NOT NULL,
        source TEXT NOT NULL,
        ingested_at TEXT NOT NULL,
        expected INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job, run_date)
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        summary TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        channel TEXT,
        ts TEXT,
        acked_by TEXT,
        opened_at TEXT NOT NULL,
        resolved_at TEXT,
        UNIQUE (source, key)
    );
    CREATE TABLE silences (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        matcher TEXT NOT NULL,
        until TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE oncall_overrides (
        id INTEGER PRIMARY KEY,
        rotation TEXT NOT NULL,
        user TEXT NOT NULL,
        start TEXT NOT NULL,
        end TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        deleted_at TEXT
    );
    CREATE TABLE job_runs (
        job TEXT NOT NULL,
        slot TEXT NOT NULL,
        ran_at TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (job, slot)
    );
    """,
    # 2: on-call handoffs (with the message as posted, so Acknowledge edits exactly that), cover requests
    # (taken by compare-and-set) and the Slack state last set per rotation (to skip unchanged calls).
    """
    CREATE TABLE oncall_handoffs (
        id INTEGER PRIMARY KEY,
        rotation TEXT NOT NULL,
        slot TEXT NOT NULL,
        outgoing TEXT,
        incoming TEXT NOT NULL,
        channel TEXT NOT NULL,
        ts TEXT,
        message TEXT NOT NULL DEFAULT '{}',
        posted_at TEXT NOT NULL,
        acked_by TEXT,
        acked_at TEXT,
        reminded_at TEXT,
        UNIQUE (rotation, slot)
    );
    CREATE TABLE oncall_cover_requests (
        id INTEGER PRIMARY KEY,
        rotation TEXT NOT NULL,
        requester TEXT NOT NULL,
        start TEXT NOT NULL,
        end TEXT NOT NULL,
        channel TEXT NOT NULL,
        ts TEXT,
        taken_by TEXT,
        taken_at TEXT,
        override_id INTEGER,
        created_at TEXT NOT NULL
    );
    CREATE TABLE oncall_slack_state (
        rotation TEXT PRIMARY KEY,
        usergroup_users TEXT,
        topic TEXT,
        updated_at TEXT NOT NULL
    );
    """,
    # 3: retrain runs keep why they were asked for, how they ended and who cancelled them, so a card
    # redrawn after a restart says the same as before.
    """
    ALTER TABLE retrain_runs ADD COLUMN reason TEXT;
    ALTER TABLE retrain_runs ADD COLUMN detail TEXT;
    ALTER TABLE retrain_runs ADD COLUMN cancelled_by TEXT;
    CREATE INDEX retrain_runs_model ON retrain_runs(model, state);
    """,
    # 4: a release's standing per environment (releases.state is its standing on staging, prod_state in
    # prod), so an operation in one environment never rewrites the other's; button presses claimed once.
    """
    ALTER TABLE releases ADD COLUMN prod_state TEXT;
    UPDATE releases SET prod_state = state, state = 'verified' WHERE state IN ('promoting', 'live', 'promote_failed');
    CREATE TABLE presses (key TEXT PRIMARY KEY, actor TEXT NOT NULL, ts TEXT NOT NULL);
    """,
    # 5: the Slack work a webhook accepted, kept until it is done (bot/hooks.py): hooks answer once it is
    # committed, and what a stop or a crash cut short runs after the next start.
    """
    CREATE TABLE hook_queue (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        queued_at TEXT NOT NULL,
        error TEXT,
        failed_at TEXT
    );
    CREATE INDEX hook_queue_key ON hook_queue(state, key, id);
    """,
    # 6: each failed try of a watched Airflow task, so an alert can say how often the task failed this week.
    """
    CREATE TABLE pipeline_failures (
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        try_number INTEGER NOT NULL,
        failed_at TEXT NOT NULL,
        PRIMARY KEY (dag_id, run_id, task_id, try_number)
    );
    CREATE INDEX pipeline_failures_task ON pipeline_failures(dag_id, task_id, failed_at);
    """,
    # 7: canaries (a version on part of the prod fleet) and every measurement of their analysis, so a restart
    # resumes one and `/mlops canary <model> report` shows why it was judged as it was.
    """
    CREATE TABLE canaries (
        id INTEGER PRIMARY KEY,
        release_id INTEGER NOT NULL,
        model TEXT NOT NULL,
        baseline_release_id INTEGER NOT NULL,
        canary_endpoints TEXT NOT NULL,
        baseline_endpoints TEXT NOT NULL,
        percent REAL NOT NULL,
        interval_s REAL NOT NULL,
        duration_s REAL NOT NULL,
        started_by TEXT NOT NULL,
        started_at TEXT NOT NULL,
        start_counters TEXT,
        state TEXT NOT NULL,
        decision TEXT,
        decided_by TEXT,
        decided_at TEXT,
        outcome TEXT,
        ended_at TEXT
    );
    CREATE INDEX canaries_model ON canaries(model, id);
    CREATE TABLE canary_steps (
        canary_id INTEGER NOT NULL,
        step INTEGER NOT NULL,
        at TEXT NOT NULL,
        verdict TEXT NOT NULL,
        canary TEXT NOT NULL,
        baseline TEXT NOT NULL,
        reasons TEXT NOT NULL,
        endpoints TEXT NOT NULL,
        PRIMARY KEY (canary_id, step)
    );
    """,
    # 8: the single active instance (bot/replication/lease.py): who holds the store, when it last said so.
    """
    CREATE TABLE lease (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        holder TEXT NOT NULL,
        heartbeat TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    """,
    # 9: the train running itself (bot/releases/train.py): each registry version an auto_deploy model's watch
    # took, once, and what became of it (queued, deployed as a release, skipped, broken); the models whose
    # registry was first looked at (versions there before auto_deploy was turned on are not deployed); and
    # the unverified staging releases whose engineer was nudged at the end of a deploy window.
    """
    CREATE TABLE train_watch (
        model TEXT PRIMARY KEY,
        since TEXT NOT NULL
    );
    CREATE TABLE train_queue (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        created_at TEXT,
        seen_at TEXT NOT NULL,
        source TEXT NOT NULL,
        engineer TEXT,
        state TEXT NOT NULL,
        release_id INTEGER,
        reason TEXT,
        PRIMARY KEY (model, version)
    );
    CREATE TABLE staging_nudges (
        release_id INTEGER PRIMARY KEY,
        nudged_at TEXT NOT NULL
    );
    """,
    # 10: what the bot said once about a standing condition (bot/notices.py), so a restart or a failover does not
    # say it again: the fleet's drift per environment, a registry that cannot be reached.
    """
    CREATE TABLE notices (
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        said_at TEXT NOT NULL,
        PRIMARY KEY (topic, key)
    );
    """,
]


def statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (which contain ';') whole."""
    statements, buffer = [], ""
    for line in script.strip().splitlines():
        if line.strip().startswith("--"):
            continue
        buffer += line + "\n"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements
