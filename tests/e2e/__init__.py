"""Browser end-to-end tests: MSAL JS custom auth in headless Chromium (see README.md)."""
