"""HTTP adapters: one blueprint per API area. They only translate HTTP to calls on shared/ and back."""
