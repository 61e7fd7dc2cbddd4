"""The search filter language: text → AST (`parser`), AST → parameterised SQL (`compiler`, `ordering`).

The parser knows nothing of SQL and the compiler never sees user text except as `$n` parameters.
"""
