"""What `rtcts run` starts on one machine: local Ray, an embedded Redis, the app."""
