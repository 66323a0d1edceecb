-- runcontrol schema 2: the identity of this database's runs. It never changes while the
-- data lives, so clients that reconnect (to a restarted replica or another one) know
-- their revisions still mean the same; an in-memory server has a new one at each start.
CREATE TABLE rc_identity (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    store_id  text NOT NULL
);
INSERT INTO rc_identity (store_id) VALUES (gen_random_uuid()::text);
