-- The registration transaction's SQL as the app issues it for a confirmed seat
-- (webapp/services/registrations.py register() through the unit of work), with no
-- Python in the way. Run by `make bench` with: pgbench -n -M prepared -f this-file
-- -D min_event=.. -D max_event=.. (the open events, which have free seats).
\set event_id random(:min_event, :max_event)
\set n random(1, 1000000000000)
BEGIN;
-- idempotency: has this form been submitted before?
SELECT "Id", "EventId", "Status" FROM "EventRegistrations" WHERE "IdempotencyKey" = md5(:client_id::text || '-' || :n::text);
-- lock the event row: registrations of one event are serialized here
SELECT "Id", "Capacity", "ConfirmedCount", "WaitlistCount", "LastQueueKey", "RegistrationOpen", "StartDate" FROM "Events" WHERE "Id" = :event_id::int FOR UPDATE;
SELECT "Id", "EventId", "Status" FROM "EventRegistrations" WHERE "IdempotencyKey" = md5(:client_id::text || '-' || :n::text);
-- the attendee by email (new person: not found)
SELECT "Id", "Name", "Email" FROM "Users" WHERE "Email" = 'pgb-' || :client_id::text || '-' || :n::text || '@bench.example.com';
INSERT INTO "Users" ("Id", "Name", "Email", "CreatedAt") VALUES (gen_random_uuid(), 'Pgbench Person', 'pgb-' || :client_id::text || '-' || :n::text || '@bench.example.com', now());
INSERT INTO "EventRegistrations" ("Id", "EventId", "UserId", "Status", "PositionInQueue", "IdempotencyKey", "CreatedAt", "UpdatedAt", "ConfirmedAt") SELECT gen_random_uuid(), :event_id::int, "Id", 'Confirmed', NULL, md5(:client_id::text || '-' || :n::text), now(), now(), now() FROM "Users" WHERE "Email" = 'pgb-' || :client_id::text || '-' || :n::text || '@bench.example.com';
UPDATE "Events" SET "ConfirmedCount" = "ConfirmedCount" + 1, "UpdatedAt" = now() WHERE "Id" = :event_id::int;
-- the outbox row joins the business transaction; NOTIFY wakes the relay after commit
INSERT INTO "OutboxMessages" ("Id", "Type", "Data", "CreatedAt", "RetryCount", "MaxRetryCount", "EventId") VALUES (gen_random_uuid(), 'RegistrationCreated', json_build_object('event_id', :event_id::int, 'status', 'Confirmed', 'position', NULL)::text, now(), 0, 3, :event_id::int);
SELECT pg_notify('outbox_messages', '');
COMMIT;
