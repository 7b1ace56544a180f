-- The OVN driver: one agent programs every router of the northbound database, the one holding
-- this lease (row 2 of the lease table; row 1 is the monitor's).
INSERT INTO monitor_lease (id, holder, expires_at) VALUES (2, '', 0);
