-- A second counter, moved by every status an agent records (a status is not a change for the
-- agents to follow, so it does not move row 1): with both, a process can tell that nothing at
-- all changed since it last read the mappings, and list them from memory.
INSERT INTO generation (id, value) VALUES (2, 0);
