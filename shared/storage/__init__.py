"""State: Table Storage access (tables), users and clients (directory), the sign-in log, maintenance
and readiness."""
