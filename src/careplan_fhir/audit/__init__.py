"""The audit trail: an AuditEvent per request and a Provenance per write.

* :mod:`.events`: builds the R4 AuditEvent of one request (pure);
* :mod:`.sink`: stores AuditEvents from a background thread, in batches;
* :mod:`.middleware`: the ASGI middleware that records one AuditEvent per request;
* :mod:`.provenance`: the Provenance stored with every write, in the write's transaction.
"""
