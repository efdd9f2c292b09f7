"""schemathesis hooks for tests/test_schemathesis.py (loaded through its `hooks` setting).

A page cursor is opaque: only a `next_cursor` the API returned is one, so the schema gives it its own format
("cursor") rather than a pattern. The fuzzer is told the one cursor a client can make up: none (an empty value).
"""

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format("cursor", st.just(""))
