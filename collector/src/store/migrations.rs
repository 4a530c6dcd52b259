//! Embedded schema, versioned with `PRAGMA user_version` and migrated on open.

/// Each entry upgrades the schema from version `index` to `index + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // v1: users, sessions, agent tokens, instances, samples, batch dedup.
    r#"
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        is_admin      INTEGER NOT NULL,
        project       TEXT,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        id             TEXT PRIMARY KEY,
        user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at_ms  INTEGER NOT NULL,
        last_seen_ms   INTEGER NOT NULL
    );
    CREATE TABLE agent_tokens (
        id            INTEGER PRIMARY KEY,
        token_sha256  TEXT NOT NULL UNIQUE,
        project       TEXT NOT NULL,
        region        TEXT NOT NULL,
        party         TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    );
    CREATE TABLE instances (
        instance_id       TEXT PRIMARY KEY,
        project           TEXT NOT NULL,
        region            TEXT NOT NULL,
        party             TEXT NOT NULL,
        token_id          INTEGER NOT NULL,
        hostname          TEXT NOT NULL,
        cpu_count         INTEGER NOT NULL,
        mem_total_bytes   INTEGER NOT NULL,
        disk_total_bytes  INTEGER NOT NULL,
        lan_ips           TEXT NOT NULL,
        wan_ips           TEXT NOT NULL,
        agent_version     TEXT NOT NULL,
        os                TEXT NOT NULL,
        created_at_ms     INTEGER NOT NULL,
        updated_at_ms     INTEGER NOT NULL,
        last_seen_ms      INTEGER NOT NULL,
        monitoring        INTEGER NOT NULL DEFAULT 0,
        interval_secs     INTEGER NOT NULL,
        interval_by_admin INTEGER NOT NULL DEFAULT 0,
        dropped_samples   INTEGER NOT NULL DEFAULT 0,
        spooled_batches   INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX instances_project ON instances(project, region);
    CREATE TABLE batches (
        batch_id       TEXT PRIMARY KEY,
        instance_id    TEXT NOT NULL,
        received_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE vm_samples (
        id                INTEGER PRIMARY KEY,
        instance_id       TEXT NOT NULL,
        sampled_at_ms     INTEGER NOT NULL,
        elapsed_ms        INTEGER NOT NULL,
        cpu_pct           REAL NOT NULL,
        mem_pct           REAL NOT NULL,
        disk_read         REAL NOT NULL,
        disk_write        REAL NOT NULL,
        net_in            REAL NOT NULL,
        net_out           REAL NOT NULL,
        rx_bytes_total    INTEGER NOT NULL,
        tx_bytes_total    INTEGER NOT NULL,
        proc_count        INTEGER NOT NULL
    );
    CREATE INDEX vm_samples_instance_time ON vm_samples(instance_id, sampled_at_ms);
    CREATE TABLE process_samples (
        id             INTEGER PRIMARY KEY,
        instance_id    TEXT NOT NULL,
        sampled_at_ms  INTEGER NOT NULL,
        pid            INTEGER NOT NULL,
        start_time     REAL NOT NULL,
        cmd            TEXT NOT NULL,
        cpu_pct        REAL NOT NULL,
        mem_pct        REAL NOT NULL,
        disk_read      REAL NOT NULL,
        disk_write     REAL NOT NULL,
        net_in         REAL NOT NULL,
        net_out        REAL NOT NULL,
        shutdown_time  REAL
    );
    CREATE INDEX process_samples_instance_time ON process_samples(instance_id, sampled_at_ms);
    CREATE INDEX process_samples_instance_cmd ON process_samples(instance_id, cmd, sampled_at_ms);
    "#,
    // v2: project bandwidth rollup (mana_api flow, flow_monthly): bytes per project, region and
    // 10-minute bucket; per UTC day the totals and the peak bucket (so a month reads ~30 day rows
    // plus its edge buckets); each instance's last counter reading for the next delta. Samples
    // stored before this version are not rolled up.
    r#"
    CREATE TABLE flow_buckets (
        project          TEXT NOT NULL,
        bucket_start_ms  INTEGER NOT NULL,
        region           TEXT NOT NULL,
        in_bytes         INTEGER NOT NULL,
        out_bytes        INTEGER NOT NULL,
        PRIMARY KEY (project, bucket_start_ms, region)
    ) WITHOUT ROWID;
    CREATE INDEX flow_buckets_time ON flow_buckets(bucket_start_ms);
    CREATE TABLE flow_days (
        project        TEXT NOT NULL,
        day_start_ms   INTEGER NOT NULL,
        region         TEXT NOT NULL,
        total_in       INTEGER NOT NULL,
        total_out      INTEGER NOT NULL,
        max_in         INTEGER NOT NULL,
        max_in_at_ms   INTEGER NOT NULL,
        max_out        INTEGER NOT NULL,
        max_out_at_ms  INTEGER NOT NULL,
        PRIMARY KEY (project, day_start_ms, region)
    ) WITHOUT ROWID;
    CREATE INDEX flow_days_time ON flow_days(day_start_ms);
    CREATE TABLE flow_counters (
        instance_id    TEXT PRIMARY KEY,
        sampled_at_ms  INTEGER NOT NULL,
        rx_bytes       INTEGER NOT NULL,
        tx_bytes       INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // Rating (CloudKitty-compatible API): module states, deprecated collector mappings/states,
    // hashmap rules (costs and levels as exact decimal text), processing state, and the rated
    // datapoints with their per-period, tenant and type totals (what the reports read).
    r#"
    CREATE TABLE rating_modules (
        module_id  TEXT PRIMARY KEY,
        enabled    INTEGER NOT NULL,
        priority   INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE rating_collector_mappings (
        service    TEXT PRIMARY KEY,
        collector  TEXT NOT NULL
    );
    CREATE TABLE rating_collector_states (
        name     TEXT PRIMARY KEY,
        enabled  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE hashmap_services (
        service_id  TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE
    );
    CREATE TABLE hashmap_fields (
        field_id    TEXT PRIMARY KEY,
        service_id  TEXT NOT NULL REFERENCES hashmap_services(service_id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        UNIQUE (service_id, name)
    );
    CREATE TABLE hashmap_groups (
        group_id  TEXT PRIMARY KEY,
        name      TEXT NOT NULL UNIQUE
    );
    CREATE TABLE hashmap_mappings (
        mapping_id  TEXT PRIMARY KEY,
        value       TEXT,
        map_type    TEXT NOT NULL CHECK (map_type IN ('flat', 'rate')),
        cost        TEXT NOT NULL,
        service_id  TEXT REFERENCES hashmap_services(service_id) ON DELETE CASCADE,
        field_id    TEXT REFERENCES hashmap_fields(field_id) ON DELETE CASCADE,
        group_id    TEXT REFERENCES hashmap_groups(group_id) ON DELETE SET NULL,
        tenant_id   TEXT,
        CHECK ((service_id IS NULL) <> (field_id IS NULL))
    );
    CREATE INDEX hashmap_mappings_service ON hashmap_mappings(service_id);
    CREATE INDEX hashmap_mappings_field ON hashmap_mappings(field_id);
    CREATE INDEX hashmap_mappings_group ON hashmap_mappings(group_id);
    CREATE TABLE hashmap_thresholds (
        threshold_id  TEXT PRIMARY KEY,
        level         TEXT NOT NULL,
        map_type      TEXT NOT NULL CHECK (map_type IN ('flat', 'rate')),
        cost          TEXT NOT NULL,
        service_id    TEXT REFERENCES hashmap_services(service_id) ON DELETE CASCADE,
        field_id      TEXT REFERENCES hashmap_fields(field_id) ON DELETE CASCADE,
        group_id      TEXT REFERENCES hashmap_groups(group_id) ON DELETE SET NULL,
        tenant_id     TEXT,
        CHECK ((service_id IS NULL) <> (field_id IS NULL))
    );
    CREATE INDEX hashmap_thresholds_service ON hashmap_thresholds(service_id);
    CREATE INDEX hashmap_thresholds_field ON hashmap_thresholds(field_id);
    CREATE INDEX hashmap_thresholds_group ON hashmap_thresholds(group_id);
    CREATE TABLE rating_state (
        name   TEXT PRIMARY KEY,
        value  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE rated_points (
        id            INTEGER PRIMARY KEY,
        begin_ms      INTEGER NOT NULL,
        end_ms        INTEGER NOT NULL,
        tenant_id     TEXT NOT NULL,
        res_type      TEXT NOT NULL,
        unit          TEXT NOT NULL,
        qty           TEXT NOT NULL,
        rating        TEXT NOT NULL,
        descr         TEXT NOT NULL,
        processed_ms  INTEGER NOT NULL
    );
    CREATE INDEX rated_points_period ON rated_points(begin_ms, tenant_id, res_type);
    CREATE TABLE rated_totals (
        begin_ms   INTEGER NOT NULL,
        end_ms     INTEGER NOT NULL,
        tenant_id  TEXT NOT NULL,
        res_type   TEXT NOT NULL,
        rate       TEXT NOT NULL,
        PRIMARY KEY (begin_ms, tenant_id, res_type)
    ) WITHOUT ROWID;
    CREATE INDEX rated_totals_tenant ON rated_totals(tenant_id, begin_ms);
    "#,
    // Per-process network attribution: how much of each VM sample's interface traffic (KB/s)
    // its processes account for. NULL where it was not measured (process sampling off,
    // sock_diag unavailable, rows from agents or collectors older than this version).
    r#"
    ALTER TABLE vm_samples ADD COLUMN net_attributed_in REAL;
    ALTER TABLE vm_samples ADD COLUMN net_attributed_out REAL;
    ALTER TABLE vm_samples ADD COLUMN net_unattributed_in REAL;
    ALTER TABLE vm_samples ADD COLUMN net_unattributed_out REAL;
    "#,
    // Retention deletes batch ids by receipt time without scanning the dedup table.
    r#"
    CREATE INDEX batches_received ON batches(received_at_ms);
    "#,
    // CDN (SPEC 3.4): flow API users with their plain secrets (the MD5 signature needs them) and
    // domains; traffic per domain and 5-minute bucket (epoch seconds) added from each newly
    // stored batch; per-agent ingestion status (malformed access-log lines).
    r#"
    CREATE TABLE cdn_users (
        id             INTEGER PRIMARY KEY,
        name           TEXT NOT NULL UNIQUE,
        secret         TEXT NOT NULL,
        created_at_ms  INTEGER NOT NULL,
        revoked_at_ms  INTEGER
    );
    CREATE TABLE cdn_user_domains (
        user_id  INTEGER NOT NULL REFERENCES cdn_users(id) ON DELETE CASCADE,
        domain   TEXT NOT NULL,
        PRIMARY KEY (user_id, domain)
    ) WITHOUT ROWID;
    CREATE INDEX cdn_user_domains_domain ON cdn_user_domains(domain);
    CREATE TABLE cdn_buckets (
        domain        TEXT NOT NULL,
        bucket_start  INTEGER NOT NULL,
        bytes         INTEGER NOT NULL,
        hit_bytes     INTEGER NOT NULL,
        requests      INTEGER NOT NULL,
        PRIMARY KEY (domain, bucket_start)
    ) WITHOUT ROWID;
    CREATE TABLE cdn_sources (
        instance_id            TEXT PRIMARY KEY,
        files                  INTEGER NOT NULL,
        malformed_lines_total  INTEGER NOT NULL,
        last_report_ms         INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // CDN edge tokens: only these may report CDN access-log traffic (any domain's bytes count
    // towards a CDN customer's bill, so tenants' ordinary agent tokens must not).
    r#"
    ALTER TABLE agent_tokens ADD COLUMN cdn_edge INTEGER NOT NULL DEFAULT 0;
    "#,
    // VM bandwidth is "bandwidth" everywhere; "flow" names only the CDN API (the mana_api paths
    // /flow and /flow_monthly keep the seed's names).
    r#"
    ALTER TABLE flow_buckets RENAME TO bandwidth_buckets;
    ALTER TABLE flow_days RENAME TO bandwidth_days;
    ALTER TABLE flow_counters RENAME TO bandwidth_counters;
    DROP INDEX flow_buckets_time;
    CREATE INDEX bandwidth_buckets_time ON bandwidth_buckets(bucket_start_ms);
    DROP INDEX flow_days_time;
    CREATE INDEX bandwidth_days_time ON bandwidth_days(day_start_ms);
    "#,
    // Dedup per instance: a batch id is remembered with the instance that sent it, so one tenant's
    // batch id can never make another tenant's batch a silent duplicate.
    r#"
    CREATE TABLE batches_per_instance (
        instance_id    TEXT NOT NULL,
        batch_id       TEXT NOT NULL,
        received_at_ms INTEGER NOT NULL,
        PRIMARY KEY (instance_id, batch_id)
    ) WITHOUT ROWID;
    INSERT INTO batches_per_instance (instance_id, batch_id, received_at_ms)
        SELECT instance_id, batch_id, received_at_ms FROM batches;
    DROP TABLE batches;
    ALTER TABLE batches_per_instance RENAME TO batches;
    CREATE INDEX batches_received ON batches(received_at_ms);
    "#,
    // The time axis of each instance's samples (collector/src/timeaxis.rs): the previous
    // sample's wall-clock and placed times, and the offset between them. NULL until a sample.
    r#"
    ALTER TABLE instances ADD COLUMN clock_last_raw_ms INTEGER;
    ALTER TABLE instances ADD COLUMN clock_last_placed_ms INTEGER;
    ALTER TABLE instances ADD COLUMN clock_offset_ms INTEGER NOT NULL DEFAULT 0;
    "#,
    // Per-token quotas count instances by token; ids are unique ignoring case.
    r#"
    CREATE INDEX instances_token ON instances(token_id, created_at_ms);
    CREATE INDEX instances_id_nocase ON instances(instance_id COLLATE NOCASE);
    "#,
    // CDN edge tokens are bound to the CDN users (customers) whose domains they may report.
    r#"
    CREATE TABLE agent_token_cdn_users (
        token_id   INTEGER NOT NULL,
        user_name  TEXT NOT NULL,
        PRIMARY KEY (token_id, user_name)
    ) WITHOUT ROWID;
    "#,
    // Which agent reports each instance (its uid), and how often a second live agent was refused
    // for it (a cloned image).
    r#"
    ALTER TABLE instances ADD COLUMN agent_uid TEXT;
    ALTER TABLE instances ADD COLUMN agent_conflicts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE instances ADD COLUMN last_conflict_ms INTEGER;
    "#,
    // Steal and unreadable figures (agent truth): the VM's steal share and how many processes
    // had a figure the agent could not read; a process's disk figures flagged unreadable (then
    // served as null).
    r#"
    ALTER TABLE vm_samples ADD COLUMN cpu_steal_pct REAL;
    ALTER TABLE vm_samples ADD COLUMN unreadable_procs INTEGER;
    ALTER TABLE process_samples ADD COLUMN disk_unreadable INTEGER NOT NULL DEFAULT 0;
    "#,
    // The previous sample's guest uptime, which links samples of one boot on the time axis.
    r#"
    ALTER TABLE instances ADD COLUMN clock_last_uptime_ms INTEGER;
    "#,
    // The agent's batch sequence number with each stored batch id: "nothing lost" is then a
    // question of which numbers are missing, not of gaps in sample times.
    r#"
    ALTER TABLE batches ADD COLUMN seq INTEGER;
    "#,
    // The interfaces an agent's network figures count, from its inventory (comma-separated).
    r#"
    ALTER TABLE instances ADD COLUMN net_interfaces TEXT NOT NULL DEFAULT '';
    "#,
    // The access-log positions after an edge agent's newest stored batch: handed back to an agent
    // that lost its state, so it does not bill its logs again.
    r#"
    ALTER TABLE cdn_sources ADD COLUMN tail_json TEXT;
    "#,
    // Rating (issue 20): CloudKitty v2 scope states (one row per scope whose state was touched;
    // scopes themselves are the projects that have instances or ratings), reprocessing schedules,
    // and hashmap rule validity periods (upstream 2025.2: a rule charges only for periods with
    // start <= period begin < end; NULL = unbounded).
    r#"
    CREATE TABLE rating_scopes (
        scope_id    TEXT PRIMARY KEY,
        scope_key   TEXT NOT NULL DEFAULT 'project_id',
        fetcher     TEXT NOT NULL DEFAULT 'vmmon',
        collector   TEXT NOT NULL DEFAULT 'vmmon',
        active      INTEGER NOT NULL DEFAULT 1,
        toggled_ms  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE rating_reprocesses (
        id          INTEGER PRIMARY KEY,
        scope_id    TEXT NOT NULL,
        reason      TEXT NOT NULL,
        start_ms    INTEGER NOT NULL,
        end_ms      INTEGER NOT NULL,
        current_ms  INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL
    );
    CREATE INDEX rating_reprocesses_scope ON rating_reprocesses(scope_id, start_ms);
    ALTER TABLE hashmap_mappings ADD COLUMN start_ms INTEGER;
    ALTER TABLE hashmap_mappings ADD COLUMN end_ms INTEGER;
    ALTER TABLE hashmap_mappings ADD COLUMN name TEXT;
    ALTER TABLE hashmap_mappings ADD COLUMN description TEXT;
    ALTER TABLE hashmap_thresholds ADD COLUMN start_ms INTEGER;
    ALTER TABLE hashmap_thresholds ADD COLUMN end_ms INTEGER;
    ALTER TABLE hashmap_thresholds ADD COLUMN name TEXT;
    ALTER TABLE hashmap_thresholds ADD COLUMN description TEXT;
    "#,
    // Per-minute rollup of the VM figures (issue 18): min, sum and max of each chartable column
    // and the sample count per instance and minute (minutes start at multiples of 60,000 ms of
    // the epoch), written with the samples; `/api/series` reads it for steps of a minute or more.
    // Existing samples are rolled up here.
    r#"
    CREATE TABLE vm_minutes (
        instance_id   TEXT NOT NULL,
        minute_ms     INTEGER NOT NULL,
        samples       INTEGER NOT NULL,
        cpu_pct_min    REAL NOT NULL,
        cpu_pct_sum    REAL NOT NULL,
        cpu_pct_max    REAL NOT NULL,
        mem_pct_min    REAL NOT NULL,
        mem_pct_sum    REAL NOT NULL,
        mem_pct_max    REAL NOT NULL,
        disk_read_min  REAL NOT NULL,
        disk_read_sum  REAL NOT NULL,
        disk_read_max  REAL NOT NULL,
        disk_write_min REAL NOT NULL,
        disk_write_sum REAL NOT NULL,
        disk_write_max REAL NOT NULL,
        net_in_min     REAL NOT NULL,
        net_in_sum     REAL NOT NULL,
        net_in_max     REAL NOT NULL,
        net_out_min    REAL NOT NULL,
        net_out_sum    REAL NOT NULL,
        net_out_max    REAL NOT NULL,
        PRIMARY KEY (instance_id, minute_ms)
    ) WITHOUT ROWID;
    CREATE INDEX vm_minutes_time ON vm_minutes(minute_ms);
    INSERT INTO vm_minutes
    SELECT instance_id, sampled_at_ms - ((sampled_at_ms % 60000) + 60000) % 60000, COUNT(*),
        MIN(cpu_pct), SUM(cpu_pct), MAX(cpu_pct),
        MIN(mem_pct), SUM(mem_pct), MAX(mem_pct),
        MIN(disk_read), SUM(disk_read), MAX(disk_read),
        MIN(disk_write), SUM(disk_write), MAX(disk_write),
        MIN(net_in), SUM(net_in), MAX(net_in),
        MIN(net_out), SUM(net_out), MAX(net_out)
    FROM vm_samples
    GROUP BY instance_id, sampled_at_ms - ((sampled_at_ms % 60000) + 60000) % 60000;
    "#,
];
