"""Per-key quotas: requests per minute and photos per hour, each counted over a fixed window that opens
with the key's first request (or photo) after the last window closed.

Counted by the `limits` library: in the Redis of GEOLOC_BROKER_URL when one is set, so every API process
draws on the same counts, else in this process's memory. Past a quota the API answers 429 with
Retry-After: the seconds until the window that refused the request is over. A request refused for its
photos still counts as a request; its photos do not count.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from geoloc.keys import ApiKey
from geoloc.search_api.errors import ApiError
from geoloc.settings import Settings

NAMESPACE = "geoloc-quota"


class Quotas:
    def __init__(self, settings: Settings):
        self.settings = settings
        uri = settings.broker_url or "memory://"
        options = {"socket_connect_timeout": 2, "socket_timeout": 2} if settings.broker_url else {}
        self.limiter = FixedWindowRateLimiter(storage_from_string(uri, **options))
        self.blocking = bool(settings.broker_url)  # counted over the network: charge from a worker thread

    def limits_of(self, key: ApiKey) -> tuple[RateLimitItem, RateLimitItem]:
        """(requests, photos) the key may send per window: its own quotas, else the server's."""
        return (RateLimitItemPerMinute(key.requests_per_minute or self.settings.key_requests_per_minute),
                RateLimitItemPerHour(key.photos_per_hour or self.settings.key_photos_per_hour))

    def charge(self, key: ApiKey, photos: int) -> None:
        """Count one request carrying `photos` photos against the key, or raise a 429 ApiError."""
        requests, photo_limit = self.limits_of(key)
        if not self.limiter.hit(requests, NAMESPACE, key.id):
            raise self._refusal(requests, key, "too_many_requests",
                                f"key {key.id} may send {requests.amount} requests per minute")
        if photos and not self.limiter.test(photo_limit, NAMESPACE, key.id, cost=photos):
            raise self._refusal(photo_limit, key, "photo_quota",
                                f"key {key.id} may send {photo_limit.amount} photos per hour; "
                                f"this request carries {photos}")
        if photos:
            self.limiter.hit(photo_limit, NAMESPACE, key.id, cost=photos)

    def _refusal(self, item: RateLimitItem, key: ApiKey, code: str, what: str) -> ApiError:
        reset = self.limiter.get_window_stats(item, NAMESPACE, key.id).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        return ApiError(429, code, f"{what}: try again in {wait} s, or ask an admin for a key with a higher quota",
                        {"Retry-After": str(wait)})


def install(app, settings: Settings) -> None:
    app.state.quotas = Quotas(settings)
