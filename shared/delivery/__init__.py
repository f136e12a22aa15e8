"""Code and notice delivery: senders (ACS, the local outbox), the one door for codes (notify), message
templates."""
