"""Database: the embedded server, the engine, typed tables, queries and view SQL."""
