-- PAT mappings. Uniqueness is enforced by the database through one row per claimed port:
-- external_ports (router, protocol, external port) and internal_sockets (router, protocol,
-- internal address, internal port), so overlapping ranges and concurrent allocations can
-- never both succeed.
CREATE TABLE mappings (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    project_id VARCHAR(64) NOT NULL,
    router_id VARCHAR(64) NOT NULL,
    distributed INTEGER NOT NULL DEFAULT 0,
    external_ip_address VARCHAR(15) NOT NULL,
    protocol VARCHAR(3) NOT NULL,
    external_port_first INTEGER NOT NULL,
    external_port_last INTEGER NOT NULL,
    internal_ip_address VARCHAR(15) NOT NULL,
    internal_port_id VARCHAR(64),
    internal_port_first INTEGER NOT NULL,
    internal_port_last INTEGER NOT NULL,
    description VARCHAR(255) NOT NULL DEFAULT '',
    allowed_cidrs VARCHAR(4096) NOT NULL,
    masquerade INTEGER NOT NULL DEFAULT 0,
    status VARCHAR(16) NOT NULL,
    status_reason VARCHAR(255),
    created_at VARCHAR(40) NOT NULL,
    updated_at VARCHAR(40) NOT NULL
);
CREATE INDEX mappings_router ON mappings (router_id);
CREATE INDEX mappings_project ON mappings (project_id);

CREATE TABLE external_ports (
    router_id VARCHAR(64) NOT NULL,
    protocol VARCHAR(3) NOT NULL,
    port INTEGER NOT NULL,
    mapping_id VARCHAR(36) NOT NULL,
    PRIMARY KEY (router_id, protocol, port)
);
CREATE INDEX external_ports_mapping ON external_ports (mapping_id);

CREATE TABLE internal_sockets (
    router_id VARCHAR(64) NOT NULL,
    protocol VARCHAR(3) NOT NULL,
    ip VARCHAR(15) NOT NULL,
    port INTEGER NOT NULL,
    mapping_id VARCHAR(36) NOT NULL,
    PRIMARY KEY (router_id, protocol, ip, port)
);
CREATE INDEX internal_sockets_mapping ON internal_sockets (mapping_id);

-- Bumped by every change, so that agents notice changes with one cheap read.
CREATE TABLE generation (
    id INTEGER NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO generation (id, value) VALUES (1, 0);
