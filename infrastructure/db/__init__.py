"""Database plumbing: the SQL layer, migrations, the database clock, LISTEN wake-ups, start-up."""
