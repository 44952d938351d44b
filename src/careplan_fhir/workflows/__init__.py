"""Use cases shared by the REST facade, the CLI and the portal."""
