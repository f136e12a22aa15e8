"""The native-auth wire protocol: requests and answers (http), errors in the contract's shape, the
request context, input identifiers, discovery."""
