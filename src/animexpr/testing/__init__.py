"""Stand-ins that users run too.

- `fakebooru`: a Danbooru-compatible server on 127.0.0.1, which the tests and `animexpr demo` crawl.
- `faces`: drawn faces with a known answer for every expression; `benchmark` and `benchmark_cli` (the
  `animexpr benchmark` command) score a model on them.
- `factories`: store rows and the Chromium flags for the tests and the benchmarks.
"""
