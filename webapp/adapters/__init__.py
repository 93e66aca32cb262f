"""Adapters: the database mapping, repositories, read queries, outbox, cache, mail."""
