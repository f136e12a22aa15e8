"""Security decisions: the policy gate, policies, risk, send limits, passwords, one-time codes, the
method-registration rule (methods)."""
