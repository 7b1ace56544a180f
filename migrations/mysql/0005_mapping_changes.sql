-- Which mapping each change to mappings (each value of generation row 1) was about, written in
-- the same transaction as the counter: an agent that saw generation G reads the ids changed
-- after G instead of every mapping of its routers. Only the latest entries are kept; an agent
-- further behind than those reads everything, as before.
CREATE TABLE mapping_changes (
    revision BIGINT NOT NULL PRIMARY KEY,
    mapping_id VARCHAR(36) NOT NULL
);
