-- Servers and monitors report here, as agents do in `agents`: `praas status` lists them.
CREATE TABLE services (
    role VARCHAR(16) NOT NULL,
    host VARCHAR(255) NOT NULL,
    address VARCHAR(64) NOT NULL,
    version VARCHAR(32) NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    PRIMARY KEY (role, host)
);

-- The last cycle of the monitor that held the lease.
CREATE TABLE monitor_cycles (
    id INTEGER NOT NULL PRIMARY KEY,
    holder VARCHAR(64) NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    neutron_requests BIGINT,
    mappings BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    error VARCHAR(1024)
);

-- What the kernel counted for each mapping, summed by the agents that program it: packets and
-- bytes of both directions of its forwarded connections, and when they last moved.
CREATE TABLE mapping_usage (
    mapping_id VARCHAR(36) NOT NULL PRIMARY KEY,
    packets BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    last_used_at BIGINT
);
