"""Every Redis key of a machine. All share the hash tag `{machine_id}` (one Cluster slot), so
one Lua script may touch them together (shared/DESIGN.md, "Redis keys")."""

PREFIX = "vm:{{{machine_id}}}"

#: hash: state, order_id, version, since (unix s), frame (the JSON frame of the screen).
STATE = PREFIX + ":state"
#: hash per order: order_id, drink_id, drink (JSON), amount, idempotency_key, qr_string, ...
ORDER = PREFIX + ":order:{order_id}"
#: hash: drink_id -> JSON {id, name, icon, price}.
MENU = PREFIX + ":menu"
#: hash: drink_id -> units left.
STOCK = PREFIX + ":stock"
#: stream: one entry per applied transition {state, order_id, frame}; relayed to every page.
EVENTS = PREFIX + ":events"
#: stream: hints to the workers {command, order_id} (CANCEL, CHECK); truth stays in STATE/ORDER.
COMMANDS = PREFIX + ":commands"
#: stream, append-only: the sales/audit record {kind, order_id, amount, ...}.
SALES = PREFIX + ":sales"
#: hash: order_id -> JSON of what needs a person (refund owed, vend outcome unknown).
OPERATOR = PREFIX + ":operator"
#: sorted set: order_id -> unix s when its payment must be read again (closed without the
#: gateway confirming, so a late settlement is still possible: money rule 4).
RECHECK = PREFIX + ":recheck"
#: string with TTL: a worker's heartbeat, `service` is a constants.services.Service.
HEARTBEAT = PREFIX + ":heartbeat:{service}"
#: string: counter for order ids.
ORDER_SEQ = PREFIX + ":order_seq"
#: stream, capped (ALERTS_MAXLEN): every alert raised or cleared {kind, subject, state
#: (raised|cleared), detail, at (unix s)}; written in one MULTI with ALERTS_OPEN.
ALERTS = PREFIX + ":alerts"
#: hash: alert id `kind:subject` -> JSON {kind, subject, detail, at} of each open alert.
ALERTS_OPEN = PREFIX + ":alerts:open"
#: string: id of the last ALERTS entry the webhook delivered (or gave up on as refused).
ALERTS_WEBHOOK_CURSOR = PREFIX + ":alerts:webhook_cursor"
#: hash: the gateway's health as the workers' calls see it: last_ok_at, failing_since (unix s,
#: absent while calls succeed), last_error; written on a change of state only.
GATEWAY = PREFIX + ":gateway"
#: hash: `up` restarted the machine's redis-server: at (unix s of the last restart), count.
REDIS_RESTARTED = PREFIX + ":redis_restarted"
#: hash: counters the workers record with their gateway calls (cores/metrics.py): latency
#: buckets, sums and errors per call.
METRICS = PREFIX + ":metrics"
#: hash: counters folded from the sales stream at scrape time (cores/metrics.py), with the
#: id of the last entry folded (`cursor`) and the charge time of orders awaiting payment.
METRICS_SALES = PREFIX + ":metrics:sales"
#: stream, append-only: every operator action {actor, action, target, before (JSON), after
#: (JSON), at (unix s)}; never capped (shared/DESIGN.md, "Operator console").
AUDIT = PREFIX + ":audit"

#: hash: slot number -> JSON {fails_in_a_row, disabled, empty, last_reason, at} of each
#: dispenser slot that ever failed (cores/slots.py; no entry: healthy). Written by the DISPENSE
#: worker after a vend and by the operator (re-enable; a refill clears `empty`).
SLOTS = PREFIX + ":slots"
#: hash: the dispenser as last seen: driver, port, firmware (from the board's PONG), alive
#: ("1"/"0"), checked_at (unix s of the last PING). Written by the DISPENSE worker (one
#: machine) or by the gateway from the agent's hello (fleet mode).
DISPENSER = PREFIX + ":dispenser"

#: hash, fleet mode: order_id -> JSON {result (vended|failed|unknown), at (unix s), [reason]
#: (why a failed vend failed: JAM, EMPTY...)}: what the
#: machine's agent reported of a vend, from its journal (money rule 6). Written by the gateway
#: for the authenticated machine only; read by the DISPENSE worker.
VEND = PREFIX + ":vend"
#: string (short TTL): the mark a money-moving step writes on the master of the machine's slot
#: just before WAIT, only if that node holds the step (cores/broker.py, "Durability").
DURABLE = PREFIX + ":durable"

#: Fleet-wide (no machine tag): hash of the console's operators, name -> argon2id hash.
OPERATORS = "console:operators"

# Fleet mode's registry (shared/DESIGN.md, "Fleet mode"): fleet-wide, no machine tag. The hash
# tag `{fleet}` keeps the registry and its audit in one Cluster slot, so that one MULTI writes a
# change with its audit entry. Literal keys, not templates.
#: hash: machine id -> JSON {added_at (unix s), revoked_at (unix s or null), token_hash
#: (argon2id of the machine's token; null once revoked)}. Never the token itself.
FLEET_MACHINES = "fleet:{fleet}:machines"
#: hash: machine id -> JSON {last_seen (unix s), version} as the gateway last saw the agent;
#: apart from FLEET_MACHINES so that a heartbeat never races a revoke.
FLEET_SEEN = "fleet:{fleet}:seen"
#: stream, append-only: every registry change {actor, action (machine_add|machine_revoke),
#: target (machine id), before (JSON), after (JSON), at (unix s)}; never the token or its hash.
FLEET_AUDIT = "fleet:{fleet}:audit"
#: stream, capped (ALERTS_MAXLEN): every alert of every machine raised or cleared {machine_id
#: (`*`: the fleet's shared workers), kind, subject, state, detail, at}, written by fleet mode's
#: alert watcher (services/fleet_alerts.py) and the console's acknowledgements besides each
#: machine's ALERTS entry; the one queue of the webhook in fleet mode. Alerts change rarely:
#: this is no write per purchase.
FLEET_ALERTS = "fleet:{fleet}:alerts"
#: hash: alert id `kind:subject` -> JSON {kind, subject, detail, at} of the fleet-wide open
#: alerts (a shared worker service without a live process: heartbeat_stale, once for the fleet).
FLEET_ALERTS_OPEN = "fleet:{fleet}:alerts:open"
#: string: id of the last FLEET_ALERTS entry the webhook delivered (or gave up on as refused).
FLEET_ALERTS_WEBHOOK_CURSOR = "fleet:{fleet}:alerts:webhook_cursor"


# Fleet mode's work shards (cores/work.py): machine `m` belongs to shard `shard_of(m)`. Each
# shard's keys share the hash tag `{shard-N}`: one Cluster slot per shard, not per fleet.
#: stream, capped (WORK_MAXLEN): one hint per change of a machine {m (machine id), command,
#: order_id}; each worker service reads it with a consumer group named after the service, and
#: the gateway follows it to relay the machine's events to its agent.
WORK = "fleet:{{shard-{shard}}}:work"
#: sorted set: machine id -> unix s when the service's step asked to run again (its timer).
WORK_DUE = "fleet:{{shard-{shard}}}:due:{service}"
#: string with TTL (LEASE_TTL_S): the consumer name of the one process of `service` that works
#: the shard now.
WORK_LEASE = "fleet:{{shard-{shard}}}:lease:{service}"
#: sorted set: consumer name -> unix s its process last said it is alive, per service; the
#: processes of a service share the shards out by it.
FLEET_WORKERS = "fleet:{{fleet}}:workers:{service}"


def key(template: str, machine_id: str, **parts: str) -> str:
    """Fill a key template: `key(STATE, "vm-1")` -> `vm:{vm-1}:state`."""
    return template.format(machine_id=machine_id, **parts)
