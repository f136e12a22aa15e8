"""The flows: the flow state machine (state), sign-in, sign-up, reset, second-factor registration and
challenge (mfa), sign-up attributes, the account API."""
