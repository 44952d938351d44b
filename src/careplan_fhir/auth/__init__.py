"""SMART on FHIR authorization: scopes, bearer tokens, the server's own keys and clients."""
