"""Domain code of the native-auth backend. Never imports azure.functions."""
