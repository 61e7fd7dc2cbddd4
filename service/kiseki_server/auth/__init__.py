"""Access control: identities and credentials (credentials, stores.identities), per-experiment
permissions (policy, stores.permissions), the checks (authorizer) and the middlewares that enforce the
route table's `Access` on every request (middleware). See docs/auth.md and SECURITY.md."""
