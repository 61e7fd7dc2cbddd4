"""HTTP handlers by resource. Each module exports ROUTES; handlers only parse, call a store, respond."""
