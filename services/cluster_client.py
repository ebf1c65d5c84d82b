"""The Redis Cluster client of fleet mode: redis-py's RedisCluster, made to mean what
redis.Redis means where the code relies on it (services/runtime.py makes it from the settings).

The code is written against redis.Redis, and every multi-key command, Lua script and MULTI
stays in one hash slot (constants/keys.py). redis-py's cluster client differs from redis.Redis
in four ways this code would notice; ClusterClient takes them back:

- `pipeline()` is a MULTI/EXEC transaction unless `transaction=False` is said (RedisCluster's
  default is a plain pipeline, split over the nodes: cores/broker.py's WATCH/MULTI would not
  be one);
- a connection lost, or a slot moved, while keys are WATCHed raises WatchError, as it does on
  one server. redis-py's cluster transaction would retry the next command, or MULTI/EXEC
  itself, on a new connection where the WATCH no longer holds: the writes applied unguarded,
  or twice. The caller reads what holds and judges again (cores/broker.py
  `_compare_and_set`, whose transition id tells a lost reply from a lost race);
- a transaction's replies are parsed as redis.Redis parses them (redis-py's cluster
  transaction leaves SET's 'OK', XRANGE's lists, EXPIRE's 1 raw);
- a pipeline takes an MGET of one slot's keys (redis-py refuses MGET in a cluster pipeline),
  and `keys()` lists the keys of every master, not of one node;
- XREAD and XREADGROUP are routed by the keys after STREAMS read here: redis-py asks a node
  (COMMAND GETKEYS, a round trip, twice per command) for the keys of any command whose keys
  "move", and the shard runners, the gateway and the relays read streams all the time.

Everything else (MOVED, ASK, a node down, the retry with backoff) is redis-py's own. This
leans on redis-py's cluster pipeline internals (`_execution_strategy`, TransactionStrategy):
redis-py 6.1 or newer, checked by the tests on a real cluster (tests/test_redis_cluster.py,
tests/test_broker.py).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import ClusterPipeline, RedisCluster, TransactionStrategy
from redis.commands.helpers import list_or_args


def stream_read_keys(args: tuple) -> list | None:
    """The keys of an XREAD or XREADGROUP (the first half of what follows STREAMS), or None
    for any other command (or one without STREAMS)."""
    if not args or str(args[0]).upper() not in ("XREAD", "XREADGROUP"):
        return None
    words = [a.decode() if isinstance(a, bytes) else a for a in args]
    first = 4 if str(words[0]).upper() == "XREADGROUP" else 1  # past GROUP group consumer
    for n, word in enumerate(words[first:], first):
        if isinstance(word, str) and word.upper() == "STREAMS":
            rest = args[n + 1 :]
            return list(rest[: len(rest) // 2]) or None
    return None


class ClusterClient(RedisCluster):
    """redis-py's cluster client whose `pipeline()` and `keys()` mean what redis.Redis's do:
    a MULTI/EXEC transaction by default, WatchError when a WATCH is lost (module docstring);
    the keys of the whole database; a stream read's keys found without asking a node."""

    def _get_command_keys(self, *args: Any) -> Any:
        keys = stream_read_keys(args)
        return keys if keys is not None else super()._get_command_keys(*args)

    def pipeline(self, transaction: bool | None = True, shard_hint: object = None) -> Any:
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        pipe.__class__ = _ClusterPipeline  # the same object, with MGET back (below)
        if transaction:
            pipe._execution_strategy = _GuardedTransaction(pipe)
        return pipe

    def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        """Every key matching `pattern`, as on one server: asked of every master (redis-py's
        cluster client asks one node). For tests and operators' tools, never a hot path."""
        kwargs.setdefault("target_nodes", self.PRIMARIES)
        return super().keys(pattern, **kwargs)


class _ClusterPipeline(ClusterPipeline):
    """redis-py's cluster pipeline, which refuses MGET (keys of several slots would be split);
    here an MGET of one slot's keys is queued as it is on one server (one of several slots
    is refused when the pipeline runs)."""

    def mget(self, keys: Any, *args: Any) -> Any:
        return self.execute_command("MGET", *list_or_args(keys, args))

    def _get_command_keys(self, *args: Any) -> Any:
        keys = stream_read_keys(args)
        return keys if keys is not None else super()._get_command_keys(*args)


class _GuardedTransaction(TransactionStrategy):
    """redis-py's cluster transaction, except that an error on the connection that holds a
    WATCH is not retried on another one: it raises WatchError, as redis.Redis does."""

    def __init__(self, pipe: ClusterPipeline) -> None:
        super().__init__(pipe)
        self._watched = False  # a WATCH was answered on the transaction's connection

    def _send_command_parse_response(self, conn, redis_node, command_name, *args, **options):
        reply = super()._send_command_parse_response(
            conn, redis_node, command_name, *args, **options
        )
        if command_name == "WATCH":
            self._watched = True
        elif command_name in self.UNWATCH_COMMANDS:
            self._watched = False
        return reply

    def _reinitialize_on_error(self, error, failure_count):
        watched = self._watched
        super()._reinitialize_on_error(error, failure_count)  # may raise WatchError itself
        if watched:
            self._drop_connection()
            raise redis.WatchError(
                f"connection lost while watching keys ({type(error).__name__}: {error})"
            ) from error

    def _drop_connection(self) -> None:
        """Forget the WATCH with its connection (closed: the server forgets it too), so that
        the UNWATCH of a caller's clean-up is not sent to a node that may be gone."""
        connection = self._transaction_connection
        if connection is not None:
            connection.disconnect()
            node = self._nodes_manager.find_connection_owner(connection)
            if node is not None and node.redis_connection is not None:
                node.redis_connection.connection_pool.release(connection)
            self._transaction_connection = None
        self._watched = False
        self._watching = False
        self._executing = False

    def _execute_transaction(self, stack, raise_on_error):
        """EXEC's replies parsed as redis.Redis parses them (True for SET, (id, fields) for
        XRANGE, ...): redis-py's cluster transaction applies only the cluster commands'
        callbacks, and leaves the others raw."""
        data = super()._execute_transaction(stack, raise_on_error)
        slot = next(iter(self._pipeline_slots))
        node = self._nodes_manager.get_node_from_slot(slot, False)
        callbacks = self._pipe.get_redis_connection(node).response_callbacks
        parsed = []
        for reply, command in zip(data, self._command_queue, strict=True):
            name = command.args[0]
            if (
                not isinstance(reply, Exception)
                and name in callbacks
                and name not in self._pipe.cluster_response_callbacks
            ):
                options = {k: v for k, v in command.options.items() if k != "keys"}
                reply = callbacks[name](reply, **options)
            parsed.append(reply)
        return parsed

    def reset(self) -> None:
        super().reset()
        self._watched = False
