"""Django's Redis cache backend, with one redis-py client per connection pool instead of one per cache call.

Django's RedisCacheClient builds a new `redis.Redis` for every get, set or incr, and redis-py fills a table of some
170 response callbacks in each: 70 µs of CPU per cache call, as much as the Redis round trip itself. A signed agent
request makes three cache calls (its rate limits), so that was a tenth of a heartbeat. A redis-py client is
thread-safe (it takes a connection from its pool for each command), so one per pool is enough.
"""

from django.core.cache.backends import redis as django_redis


class RedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            if index not in self._pools:
                self._pools[index] = self._pool_class.from_url(self._servers[index], **self._pool_options)
            client = self._clients[index] = self._client(connection_pool=self._pools[index])
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient
