"""Limits shared by specs and the code that enforces them."""

from __future__ import annotations

# 40 megapixels: a 7,000 x 5,700 photo decodes to 120 MB of RGB; a 140 KB PNG of 12,000 x
# 12,000 (a decompression bomb) would decode to 430 MB in every loader worker.
DEFAULT_MAX_PIXELS = 40_000_000
