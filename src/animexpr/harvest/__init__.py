"""harvest room: crawl Danbooru for the expression classes and download the originals into the store.

- `client`: the polite Danbooru API client (pacing, retries, clear refusals, credentials kept secret).
- `policy`: the queries and which posts to keep (pure functions); `reasons`: why a post was not downloaded.
- `crawl`: the crawler (persisted cursors, one row per post, atomic md5-checked downloads, resumable).
- `fakebooru`: a Danbooru-compatible server on 127.0.0.1 for the tests and the offline demo.
- `cli`: the `animexpr harvest` command.
"""
