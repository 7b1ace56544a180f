-- The monitor: a mapping it holds out of the dataplane (its port or router went away, or no
-- address of the port is on the router's subnets) stays stored, with its status and reason,
-- but is not programmed until the monitor releases it.
ALTER TABLE mappings ADD COLUMN held INTEGER NOT NULL DEFAULT 0;

-- One active monitor when several run: whoever holds this lease.
CREATE TABLE monitor_lease (
    id INTEGER NOT NULL PRIMARY KEY,
    holder VARCHAR(64) NOT NULL,
    expires_at BIGINT NOT NULL
);
INSERT INTO monitor_lease (id, holder, expires_at) VALUES (1, '', 0);
