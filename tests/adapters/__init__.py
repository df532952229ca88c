"""Adapter tests: each adapter against the real library, file or clock it wraps (no broker,
no database, no model server)."""
