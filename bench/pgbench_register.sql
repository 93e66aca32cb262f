-- The registration transaction's SQL as the app issues it for a confirmed seat
-- (webapp/services/registrations.py register() through the unit of work: five
-- statements), with no Python in the way. The NOTIFY that wakes the relay comes from
-- the TR_OutboxMessages_Notify trigger, as in the app. Run by `make bench` with
-- pgbench -n -M prepared -f this-file -D min_event=.. -D max_event=.. (open events).
\set event_id random(:min_event, :max_event)
\set n random(1, 1000000000000)
BEGIN;
-- the attendee by email, inserted when new (one statement, before the event's lock)
INSERT INTO "Users" ("Id", "Name", "Email", "CreatedAt") VALUES (gen_random_uuid(), 'Pgbench Person', 'pgb-' || :client_id::text || '-' || :n::text || '@bench.example.com', now()) ON CONFLICT ("Email") DO UPDATE SET "Email" = excluded."Email" RETURNING "Id", "Name" \gset user_
-- lock the event row: registrations of one event are serialized here
SELECT "Id", "Title", "Description", "Venue", "StartDate", "Capacity", "ConfirmedCount", "WaitlistCount", "LastQueueKey", "RegistrationOpen", "CreatedAt", "UpdatedAt" FROM "Events" WHERE "Id" = :event_id::int FOR UPDATE;
INSERT INTO "EventRegistrations" ("Id", "EventId", "UserId", "Status", "PositionInQueue", "IdempotencyKey", "CreatedAt", "UpdatedAt", "ConfirmedAt") VALUES (gen_random_uuid(), :event_id::int, :user_Id::uuid, 'Confirmed', NULL, md5(:client_id::text || '-' || :n::text), now(), now(), now());
UPDATE "Events" SET "ConfirmedCount" = "ConfirmedCount" + 1, "UpdatedAt" = now() WHERE "Id" = :event_id::int;
-- the outbox row joins the business transaction
INSERT INTO "OutboxMessages" ("Id", "Type", "Data", "CreatedAt", "RetryCount", "MaxRetryCount", "EventId") VALUES (gen_random_uuid(), 'RegistrationCreated', json_build_object('event_id', :event_id::int, 'status', 'Confirmed', 'position', NULL)::text, now(), 0, 3, :event_id::int);
COMMIT;
