"""The pure layers of groups: post envelopes, group keys and invites."""
