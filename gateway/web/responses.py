"""JSON answers that cannot fail to encode, whatever a stored string holds.

A string that is not valid Unicode (a lone surrogate such as ``"\\ud800"``) cannot be encoded
as UTF-8, and a NaN is not JSON: either one, stored somewhere (a device's firmware name, a
registry row written by another tool), once made ``/api/v1/console/fleet`` and
``/api/v1/devices`` answer 500 for the whole fleet (issue 17.6). The codecs refuse such input
now; this is the defence in depth at the other end. The fast path is the plain encoder; only
when it fails is the content scrubbed: a lone surrogate becomes U+FFFD, a non-finite number
``null``, and a warning (once a minute) says that some stored value is damaged.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from starlette.responses import JSONResponse

from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger(__name__)
_LOG = LogLimiter(60.0)


def scrub(value: Any) -> Any:
    """``value`` with every string valid Unicode and every number finite (else ``None``)."""
    if isinstance(value, str):
        # UTF-16 with surrogatepass keeps well-formed pairs and lets the decoder replace the
        # lone halves, which no encoder of UTF-8 can carry.
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def encode(content: Any) -> bytes:
    """Compact UTF-8 JSON of ``content``, scrubbed if it would not encode (module doc)."""
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    except ValueError as exc:  # UnicodeEncodeError too; NaN and infinities
        _LOG.log(_LOGGER, logging.WARNING, "scrubbed",
                 "an answer held a value JSON cannot carry (%s); sent it scrubbed", exc)
        return json.dumps(scrub(content), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")


def dumps(content: Any) -> str:
    """``encode`` as text (for a WebSocket)."""
    return encode(content).decode("utf-8")


class SafeJSONResponse(JSONResponse):
    """The gateway's JSON response: never a 500 for a damaged stored value."""

    def render(self, content: Any) -> bytes:
        """UTF-8 JSON, scrubbed if it would not encode otherwise."""
        return encode(content)
