"""The patient portal: server-rendered pages built from pure view models (docs/portal.md)."""
