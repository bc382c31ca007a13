-- Mesh-bound tokens (issue 10). A user's token works only from devices of this mesh user: the
-- Headscale user id (tailscale's UserProfile.ID) that `invite` created or found, or that
-- `invite/update --mesh-user` named. NULL: none recorded (refused under mesh.identity = "enforce").
ALTER TABLE users ADD COLUMN mesh_user TEXT;

-- The device (mesh node name, or "loopback") a token was last used from, written with last_used_at.
ALTER TABLE tokens ADD COLUMN last_device TEXT;
