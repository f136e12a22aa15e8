"""Custom authentication extensions with Entra's event schema: configuration
(config), the bounded, authenticated call (caller), and the five events with
their request and response JSON (events)."""
