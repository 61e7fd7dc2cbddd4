"""The kiseki tracking service: aiohttp + asyncpg on Postgres."""
