"""Limits shared by specs and the code that enforces them."""

from __future__ import annotations

# 40 megapixels: a 7,000 x 5,700 photo decodes to 120 MB of RGB; a 140 KB PNG of 12,000 x
# 12,000 (a decompression bomb) would decode to 430 MB in every loader worker.
DEFAULT_MAX_PIXELS = 40_000_000

# The largest side of a training view or model input: 4,096 px (a ViT at patch 16 then has 65,536
# tokens per image, far past any setting that trains; larger is a typo that would pass
# validation and fail to allocate).
MAX_IMAGE_SIDE = 4096

# Shards listed at once while a tar-shard source builds its key index: threads that mostly wait
# on storage (a sidecar read or header scan is a round trip or two to an object store), so many
# more than the cores; 16 hides 20 ms of latency per request at ~400 shards/s.
DEFAULT_INDEX_THREADS = 16
