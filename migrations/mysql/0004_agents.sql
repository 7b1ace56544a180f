-- Every agent reports here: the network node it runs on (its `host`), when it last reported,
-- its last successful sync and its last error; agent_routers holds the routers whose
-- namespaces it serves. The API lists them (GET /v1/agents), and a pending mapping whose
-- router no live agent serves says so.
CREATE TABLE agents (
    host VARCHAR(255) NOT NULL PRIMARY KEY,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    last_sync_at BIGINT,
    last_error VARCHAR(1024)
);

CREATE TABLE agent_routers (
    host VARCHAR(255) NOT NULL,
    router_id VARCHAR(64) NOT NULL,
    PRIMARY KEY (host, router_id)
);
CREATE INDEX agent_routers_router ON agent_routers (router_id);
