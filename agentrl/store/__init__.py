"""Trajectory store on SQLAlchemy (SQLite by default, PostgreSQL at scale)."""
