"""The registration domain: pure Python, no Flask, SQLAlchemy or Redis."""
