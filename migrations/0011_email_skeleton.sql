-- The Unicode TS #39 skeleton of each user's email (infrastructure/emails.py): two accounts
-- whose addresses merely look alike cannot both hold one. Accounts made before this are
-- filled in by the application (the oldest of look-alikes gets it; the others keep NULL).
ALTER TABLE users ADD COLUMN email_skeleton TEXT;
CREATE UNIQUE INDEX users_email_skeleton ON users (email_skeleton);
