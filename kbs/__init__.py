"""A reference Key Broker Service, wire-compatible with trustee 0.4.0."""
