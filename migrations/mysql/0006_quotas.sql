-- Quotas. A project's own limits, set by an admin (PUT /v1/quotas/{project_id}), one row per
-- resource (mappings, external_ports); a project without a row has the [quota] defaults of
-- the configuration. -1 is unlimited.
CREATE TABLE quotas (
    project_id VARCHAR(64) NOT NULL,
    resource VARCHAR(32) NOT NULL,
    hard_limit BIGINT NOT NULL,
    PRIMARY KEY (project_id, resource)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per project, whose revision every transaction that adds to the project's usage under
-- a finite limit moves before it counts that usage: two such transactions then wait for each
-- other on one node (the row lock), and conflict at commit on two Galera nodes (both wrote the
-- row), where a lock would not be seen by the other node. The loser runs again and counts anew.
CREATE TABLE quota_locks (
    project_id VARCHAR(64) NOT NULL PRIMARY KEY,
    revision BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Usage is counted from the mappings themselves: an index that covers the count and the sum
-- of a project's external ports (it replaces the index on project_id alone).
CREATE INDEX mappings_project_ports ON mappings (project_id, external_port_first, external_port_last);
DROP INDEX mappings_project ON mappings;
