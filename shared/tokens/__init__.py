"""Tokens: signing keys, issuance and refresh (issuance), bearer checks with step-up (stepup)."""
