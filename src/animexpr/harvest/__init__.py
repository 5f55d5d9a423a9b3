"""harvest room: crawl Danbooru for the expression classes and download the originals into the store.

- `client`: the polite Danbooru API client (pacing, retries, clear refusals, credentials kept secret).
- `policy`: the queries and which posts to keep (pure functions); `reasons`: why a post was not downloaded.
- `crawl`: the crawler (persisted cursors, one row per post, atomic md5-checked downloads, resumable).
- `harvest_cli`: the `animexpr harvest` command.

The Danbooru-compatible server that the tests and the offline demo crawl is `animexpr.testing.fakebooru`.
"""
